#!/bin/bash
# One array task of a sweep on a Slurm cluster: task i trains and scores one (class, seed) trial
# into the shared run folder (main.py --run-dir: the first task creates it, the others check that
# their settings match it; a finished trial is skipped, so a task can simply be submitted again).
#
# Submit it with scripts/slurm_submit.sh, which sizes the array from the classes and seeds, puts
# the logs beside the run folder and asks for a GPU per task only where the partition has GPUs
# (docs/cluster.md):
#
#   python preprocess.py --dataset fmnist                 # once, on the login node (needs the raw files)
#   DATASET=fmnist MODEL=cascade SEEDS="0 1 2" RUN_DIR=runs/fmnist/cascade/cluster scripts/slurm_submit.sh
#   python main.py --table runs/fmnist/cascade/cluster    # the table, once every task has ended
#
# By hand, the same (#SBATCH lines cannot read variables, so the array and the log folder are
# given to sbatch; options given to sbatch replace the #SBATCH lines below):
#
#   mkdir -p runs/fmnist/cascade/cluster.logs
#   DATASET=fmnist SEEDS="0 1 2" RUN_DIR=runs/fmnist/cascade/cluster sbatch --array=0-29 \
#       --output=runs/fmnist/cascade/cluster.logs/%A_%a.out scripts/slurm_sweep.sh
#
# Task i runs class i % (number of classes) with seed number i / (number of classes) of SEEDS, so
# the array is 0 .. classes x seeds - 1 (0-29 for 10 classes and 3 seeds), or any part of it (to
# run some trials again: --array=7,23). An array reaching past it is refused by every task (one
# line `error: ...` in each log, exit code 2): its settings are not the ones it was sized for.
#
#SBATCH --job-name=cascade-memory
#SBATCH --cpus-per-task=1           # THREADS (1) torch threads per trial: more CPUs go unused unless EXTRA="--threads N"
#SBATCH --mem=4G                    # a trial's peak is about 1.1 GB (README, Speed)
#SBATCH --time=02:00:00             # per task, i.e. per trial (a 28 x 28 trial takes minutes on one GPU)
#SBATCH --output=slurm-%A_%a.out    # one log per task (job id, task id); slurm_submit.sh puts it beside the run folder

set -euo pipefail

# ---- settings: each can be given in the environment (DATASET=mnist sbatch ...) -----------------
DATASET=${DATASET:-fmnist}          # a prepared dataset (python preprocess.py --dataset NAME)
MODEL=${MODEL:-cascade}             # a preset of models/__init__.py
SEEDS=${SEEDS:-"0 1 2"}             # the seeds, separated by spaces
N_CLASSES=${N_CLASSES:-10}          # classes of the dataset (10 for mnist, fmnist, kmnist, cifar10, digits)
CLASSES=${CLASSES:-}                # the classes to run (indices or names); empty: 0 .. N_CLASSES - 1
RUN_DIR=${RUN_DIR:-runs/$DATASET/$MODEL/cluster}   # the shared run folder (relative: to the repository)
EXTRA=${EXTRA:-}                    # more main.py settings, the same for every task, e.g. "--epochs 50"
REPO=${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}            # the repository: sbatch's working directory by default
PYTHON=${PYTHON:-python}            # e.g. .venv/bin/python
# -------------------------------------------------------------------------------------------------

fail() { echo "error: $*" >&2; exit 2; }

[[ $N_CLASSES =~ ^[1-9][0-9]*$ ]] || fail "N_CLASSES must be a positive whole number, not '$N_CLASSES'"
[[ -n $CLASSES ]] || CLASSES=$(seq -s " " 0 $((N_CLASSES - 1)))
read -r -a SEED_LIST <<< "$SEEDS"
read -r -a CLASS_LIST <<< "$CLASSES"
((${#SEED_LIST[@]} > 0)) || fail "SEEDS is empty: give the seeds separated by spaces, e.g. SEEDS=\"0 1 2\""
((${#CLASS_LIST[@]} > 0)) || fail "CLASSES is empty: give the classes separated by spaces, e.g. CLASSES=\"0 1\""
N_TRIALS=$(( ${#CLASS_LIST[@]} * ${#SEED_LIST[@]} ))
if [[ ${1:-} == --count ]]; then    # scripts/slurm_submit.sh sizes the array with this
    echo "$N_TRIALS ${#CLASS_LIST[@]} ${#SEED_LIST[@]}"
    exit 0
fi
[[ -n ${SLURM_ARRAY_TASK_ID:-} ]] \
    || fail "not an array task: submit with scripts/slurm_submit.sh, or sbatch --array=0-$((N_TRIALS - 1)) (classes x seeds - 1)"
TASK=$SLURM_ARRAY_TASK_ID
LAST=${SLURM_ARRAY_TASK_MAX:-$TASK}
if (( LAST >= N_TRIALS )); then
    fail "the array reaches task $LAST, but the sweep has $N_TRIALS trials (${#CLASS_LIST[@]} classes x" \
         "${#SEED_LIST[@]} seeds): submit it with scripts/slurm_submit.sh, or sbatch --array=0-$((N_TRIALS - 1))"
fi
CLASS=${CLASS_LIST[$(( TASK % ${#CLASS_LIST[@]} ))]}
SEED=${SEED_LIST[$(( TASK / ${#CLASS_LIST[@]} ))]}

cd "$REPO" 2>/dev/null || fail "cannot enter the repository folder $REPO (REPO)"
# torch's CPU threads are main.py's THREADS (1 unless EXTRA has --threads); this is for the others
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-${OMP_NUM_THREADS:-1}}
export PYTHONUNBUFFERED=1           # each epoch's line reaches the log at once (and is kept when the task is killed)
echo "task $TASK of job ${SLURM_ARRAY_JOB_ID:-?} on $(hostname): $DATASET / $MODEL, class $CLASS, seed $SEED -> $RUN_DIR"
set -f                              # EXTRA is split into flags on purpose, never expanded as a file pattern
# shellcheck disable=SC2086
exec "$PYTHON" main.py --dataset "$DATASET" --model "$MODEL" --classes "$CLASS" --seeds "$SEED" \
    --run-dir "$RUN_DIR" $EXTRA
