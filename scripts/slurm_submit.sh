#!/usr/bin/env bash
# Submit a sweep to Slurm: scripts/slurm_sweep.sh as a job array of one task per (class, seed)
# trial, all writing into one run folder. What sbatch cannot work out from #SBATCH lines, this does:
#   - the array: 0 .. classes x seeds - 1, from CLASSES (or N_CLASSES) and SEEDS;
#   - the logs: one per task, RUN_DIR.logs/<job id>_<task id>.out, beside the run folder (the
#     folder is created here: Slurm does not create it, and a task whose log cannot be opened
#     fails without a word);
#   - a GPU per task (--gres=gpu:1) only where the partition has GPUs (a --gres that no node has
#     makes sbatch refuse the whole job).
#
#   DATASET=fmnist MODEL=cascade SEEDS="0 1 2" RUN_DIR=runs/fmnist/cascade/cluster scripts/slurm_submit.sh
#   scripts/slurm_submit.sh --array=7,23 --time=04:00:00     # any sbatch option can follow; these come last, so they win
#   python main.py --table runs/fmnist/cascade/cluster        # once every task has ended
#
# The settings are slurm_sweep.sh's, from the environment: DATASET, MODEL, SEEDS, CLASSES or
# N_CLASSES, RUN_DIR (relative: to the repository), EXTRA (main.py flags), PYTHON; and here:
#   GPUS=auto|0|N     GPUs per task; auto: 1 when the partition's nodes have gpu GRES, else 0
#   PARTITION=NAME    the partition (default: the cluster's default partition)
#   MAX_RUNNING=N     at most N tasks of the array at once (sbatch --array=...%N)
# Submitting the same sweep again runs only what is missing (finished trials are skipped,
# interrupted ones resume from their checkpoint). docs/cluster.md has the details.
set -euo pipefail

fail() { echo "error: $*" >&2; exit 2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export DATASET=${DATASET:-fmnist} MODEL=${MODEL:-cascade}
export RUN_DIR=${RUN_DIR:-runs/$DATASET/$MODEL/cluster}
[[ $RUN_DIR == /* ]] || RUN_DIR=$REPO/$RUN_DIR     # the tasks cd into the repository, as main.py's paths are
RUN_DIR=${RUN_DIR%/}
export REPO
GPUS=${GPUS:-auto}
MAX_RUNNING=${MAX_RUNNING:-}
PARTITION=${PARTITION:-}

# the number of trials, as the tasks count them (their own error for bad CLASSES, N_CLASSES, SEEDS)
read -r N_TRIALS N_CLASS N_SEED < <(bash "$REPO/scripts/slurm_sweep.sh" --count) || exit 2
[[ -n ${N_TRIALS:-} ]] || exit 2
array=0-$((N_TRIALS - 1))
if [[ -n $MAX_RUNNING ]]; then
    [[ $MAX_RUNNING =~ ^[1-9][0-9]*$ ]] || fail "MAX_RUNNING must be a positive whole number, not '$MAX_RUNNING'"
    array+=%$MAX_RUNNING
fi

command -v sbatch >/dev/null 2>&1 || fail "sbatch not found: run this on a Slurm login node (or start scripts/local_slurm.sh)"
if [[ $GPUS == auto ]]; then
    # the GRES of the partition's nodes, e.g. "gpu:4" or "(null)"; without PARTITION, the default
    # partition (sinfo marks it with *)
    if [[ -n $PARTITION ]]; then
        gres=$(sinfo -h -p "$PARTITION" -o %G) || fail "sinfo could not list partition $PARTITION"
    else
        gres=$(sinfo -h -o "%P %G" | awk '$1 ~ /\*$/ {print $2}') || fail "sinfo could not list the partitions"
    fi
    if [[ $gres == *gpu* ]]; then GPUS=1; else GPUS=0; fi
fi
[[ $GPUS =~ ^[0-9]+$ ]] || fail "GPUS must be auto or a whole number, not '$GPUS'"

LOGS=$RUN_DIR.logs
mkdir -p "$LOGS" || fail "cannot create the log folder $LOGS"
options=(--array="$array" --output="$LOGS/%A_%a.out" --export=ALL --chdir="$REPO")
((GPUS > 0)) && options+=(--gres=gpu:"$GPUS")
[[ -n $PARTITION ]] && options+=(--partition="$PARTITION")

echo "$DATASET / $MODEL: $N_TRIALS trials ($N_CLASS classes x $N_SEED seeds) -> $RUN_DIR; logs: $LOGS/; GPUs per task: $GPUS" >&2  # stderr: sbatch --parsable prints only the job id
exec sbatch "${options[@]}" "$@" "$REPO/scripts/slurm_sweep.sh"
