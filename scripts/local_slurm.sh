#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (munged, slurmctld, slurmd, all on 127.0.0.1), for the
# tests (tests/test_slurm.py) and for trying scripts/slurm_submit.sh without a real cluster.
#
#   scripts/local_slurm.sh start      # write the config, start the three daemons, wait until the node is idle
#   eval "$(scripts/local_slurm.sh env)"   # SLURM_CONF for sbatch, squeue, scontrol, scancel, sinfo
#   scripts/local_slurm.sh status     # each daemon and the node; exit code 0 when all are up
#   scripts/local_slurm.sh stop       # cancel every job of this cluster, stop the daemons, check with ps
#
# It installs nothing (Debian: apt-get install --no-install-recommends slurm-wlm munge). Everything
# it writes is below one state folder, LOCAL_SLURM_DIR (default /tmp/cascade-memory-slurm): slurm.conf,
# its own munge key and socket, the daemons' pid files, logs and spool folders. The machine's own
# /etc/slurm and /etc/munge are neither read nor written: the daemons get this slurm.conf with -f,
# the clients through SLURM_CONF, munged its key and socket by flags, Slurm the socket by AuthInfo.
# The ports are LOCAL_SLURM_PORT (slurmctld, default 16817) and the one after it (slurmd), away
# from Slurm's own 6817 and 6818, so that a real Slurm on the machine is not disturbed.
#
# The node is this machine as `slurmd -C` sees it (its real CPU count and memory, no GPUs); the
# daemons run as the user who starts them (root in the tests: jobs then run as root). Cores are
# the consumable resource (select/cons_tres, CR_Core): a 2-core machine runs 2 one-CPU tasks at
# once. There is no accounting database (no slurmdbd), so sacct has nothing to show: finished jobs
# stay visible to `scontrol show job` for an hour (MinJobAge).
set -euo pipefail

STATE=${LOCAL_SLURM_DIR:-/tmp/cascade-memory-slurm}
PORT=${LOCAL_SLURM_PORT:-16817}
WAIT=${LOCAL_SLURM_WAIT:-60}          # seconds start waits for the node to be idle (and stop for the daemons)
CONF=$STATE/slurm.conf
SOCKET=$STATE/munge/munge.socket.2    # its folder must be readable by all (munged checks)
PRIVATE=$STATE/munge/private          # the key, munged's pid, seed and log (mode 700)
export SLURM_CONF=$CONF
export PATH=$PATH:/usr/sbin:/sbin   # the daemons live there, outside a user's PATH on Debian

die() { echo "error: $*" >&2; exit 2; }

need_binaries() {
    local missing=()
    for binary in munged munge unmunge mungekey slurmctld slurmd sinfo sbatch squeue scontrol scancel; do
        command -v "$binary" >/dev/null 2>&1 || missing+=("$binary")
    done
    ((${#missing[@]} == 0)) || die "${missing[*]} not installed: on Debian or Ubuntu, apt-get install --no-install-recommends slurm-wlm munge (this script installs nothing)"
}

pid_of() {  # the pid in pid file $1 when that process is alive and its command line holds $2
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] && ps -o args= -p "$pid" 2>/dev/null | grep -qF -- "$2" && echo "$pid"
}

munge_pid() { pid_of "$PRIVATE/munged.pid" "$SOCKET"; }
ctld_pid() { pid_of "$STATE/slurmctld.pid" "$CONF"; }
slurmd_pid() { pid_of "$STATE/slurmd.pid" "$CONF"; }

node_name() { hostname -s; }

node_state() { sinfo -h -N -n "$(node_name)" -o %t 2>/dev/null | head -n 1; }

leftovers() {  # processes of this cluster still alive (pid and command line, one a line): its
    # daemons (started with LOCAL_SLURM_MARK, their command lines name the state folder), their
    # slurmstepd processes (SLURM_CONF is this slurm.conf) and the processes of its jobs (SLURM_CONF
    # and SLURM_JOB_ID set)
    local dir pid env comm
    for dir in /proc/[0-9]*; do
        pid=${dir#/proc/}
        env=$'\n'$({ tr '\0' '\n' < "$dir/environ"; } 2>/dev/null)$'\n'
        comm=$({ cat "$dir/comm"; } 2>/dev/null) || continue
        if [[ $env == *$'\n'"LOCAL_SLURM_MARK=$STATE"$'\n'* ]] \
            || [[ $env == *$'\n'"SLURM_CONF=$CONF"$'\n'* && ($comm == slurmstepd || $env == *$'\n'SLURM_JOB_ID=*) ]]; then
            ps -o pid=,args= -p "$pid" || true
        fi
    done
    ps -eo pid=,comm=,args= | awk -v state="$STATE/" '($2 == "munged" || $2 == "slurmctld" || $2 == "slurmd") && index($0, state) {$2 = ""; print}' || true
}

write_conf() {
    local node hardware user
    node=$(node_name)
    # slurmd -C: this machine's CPUs, sockets, cores, threads and memory, in slurm.conf's words
    hardware=$(slurmd -C | head -n 1 | sed -e 's/^NodeName=[^ ]* //')
    [[ $hardware == *CPUs=* && $hardware == *RealMemory=* ]] || die "slurmd -C did not describe this machine: $hardware"
    user=$(id -un)
    mkdir -p "$STATE/ctld" "$STATE/slurmd" "$STATE/log" "$STATE/tmp"
    : > "$STATE/plugstack.conf"   # empty: no SPANK plugin of the machine's own /etc/slurm/plugstack.conf
    cat > "$CONF.tmp" <<EOF
# written by scripts/local_slurm.sh: a one-node cluster on 127.0.0.1, everything below $STATE
ClusterName=cascadelocal
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
TmpFS=$STATE/tmp
PlugStackConfig=$STATE/plugstack.conf
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=3600
KillWait=5
NodeName=$node NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=local Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

start_munge() {
    munge_pid >/dev/null && return 0
    mkdir -p "$PRIVATE"
    chmod 755 "$STATE" "$STATE/munge"
    chmod 700 "$PRIVATE"
    [[ -s $PRIVATE/munge.key ]] || mungekey --create --keyfile="$PRIVATE/munge.key"
    rm -f "$SOCKET" "$SOCKET.lock"
    LOCAL_SLURM_MARK=$STATE munged --key-file="$PRIVATE/munge.key" --socket="$SOCKET" --pid-file="$PRIVATE/munged.pid" \
        --log-file="$PRIVATE/munged.log" --seed-file="$PRIVATE/munged.seed" \
        || die "munged did not start: $(tail -n 3 "$PRIVATE/munged.log" 2>/dev/null | tr '\n' ' ')"
    munge -n --socket="$SOCKET" | unmunge --socket="$SOCKET" >/dev/null \
        || die "munged started but does not answer on $SOCKET"
}

start() {
    need_binaries
    # running already (idle, or busy with jobs: mix, alloc, comp): kept as it is
    if munge_pid >/dev/null && ctld_pid >/dev/null && slurmd_pid >/dev/null \
        && [[ $(node_state) =~ ^(idle|mix|alloc|comp)$ ]]; then
        echo "local Slurm already running (node $(node_name) $(node_state)); SLURM_CONF=$CONF"
        return 0
    fi
    mkdir -p "$STATE"
    if ! ctld_pid >/dev/null && ! slurmd_pid >/dev/null; then
        write_conf   # this machine as it is now (a stopped cluster's config is written again)
    fi
    start_munge
    # LOCAL_SLURM_MARK: inherited by every slurmstepd of this cluster, so stop can find them
    ctld_pid >/dev/null || LOCAL_SLURM_MARK=$STATE slurmctld -f "$CONF" \
        || die "slurmctld did not start: $(tail -n 5 "$STATE/log/slurmctld.log" 2>/dev/null | tr '\n' ' ')"
    slurmd_pid >/dev/null || LOCAL_SLURM_MARK=$STATE slurmd -f "$CONF" -N "$(node_name)" \
        || die "slurmd did not start: $(tail -n 5 "$STATE/log/slurmd.log" 2>/dev/null | tr '\n' ' ')"
    local deadline=$((SECONDS + WAIT)) state=""
    while ((SECONDS < deadline)); do
        state=$(node_state || true)
        [[ $state == idle ]] && break   # not idle* (not responding) or idle~
        sleep 0.5
    done
    if [[ $state != idle ]]; then
        echo "error: the node $(node_name) is '${state:-unknown}', not idle, after ${WAIT}s; the logs:" >&2
        tail -n 8 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 2>/dev/null || true
        stop >&2 || true
        exit 1
    fi
    echo "local Slurm up: node $(node_name) idle ($(sinfo -h -N -o '%c CPUs, %m MB')), partition local"
    echo "export SLURM_CONF=$CONF"
}

stop_pids() {  # SIGTERM to every pid given, SIGKILL to those alive after WAIT seconds; returns once all are gone
    local pid deadline=$((SECONDS + WAIT)) alive
    kill -TERM "$@" 2>/dev/null || true
    while :; do
        alive=()
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
        ((${#alive[@]} > 0)) || return 0
        ((SECONDS < deadline)) || kill -KILL "${alive[@]}" 2>/dev/null || true
        sleep 0.1
    done
}

stop() {
    local pid pids=() jobs deadline left
    if ctld_pid >/dev/null; then
        # every job of this cluster: cancelled, then waited for (their slurmstepd processes end with them)
        jobs=$(squeue -h -o %A 2>/dev/null | sort -u || true)
        if [[ -n $jobs ]]; then
            # shellcheck disable=SC2086
            scancel --full --quiet $jobs 2>/dev/null || true
            deadline=$((SECONDS + WAIT))
            while [[ -n $(squeue -h -o %A 2>/dev/null) ]] && ((SECONDS < deadline)); do sleep 0.2; done
        fi
    fi
    if pid=$(slurmd_pid); then pids+=("$pid"); fi
    if pid=$(ctld_pid); then pids+=("$pid"); fi
    ((${#pids[@]} == 0)) || stop_pids "${pids[@]}"
    if pid=$(munge_pid); then stop_pids "$pid"; fi   # last: the others talk to it until they end
    left=$(leftovers)
    if [[ -n $left ]]; then  # a slurmstepd whose job outlived the cancel, or a daemon without its pid file
        # shellcheck disable=SC2046
        stop_pids $(awk '{print $1}' <<< "$left" | sort -u)
        left=$(leftovers)
    fi
    [[ -z $left ]] || { echo "error: processes of the local Slurm are still running:" >&2; echo "$left" >&2; exit 1; }
    echo "local Slurm stopped: no munged, slurmctld, slurmd or slurmstepd of $STATE left (ps)"
}

status() {
    local up=0 pid
    for daemon in munge ctld slurmd; do
        if pid=$("${daemon}_pid"); then echo "$daemon: running (pid $pid)"; else echo "$daemon: not running"; up=1; fi
    done
    if ((up == 0)); then echo "node $(node_name): $(node_state)"; fi
    echo "state folder: $STATE; export SLURM_CONF=$CONF"
    return $up
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) die "usage: scripts/local_slurm.sh start|stop|status|env (state folder: LOCAL_SLURM_DIR, now $STATE)" ;;
esac
