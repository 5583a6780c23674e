#!/bin/bash
# A sweep on a Slurm cluster: one array task per (class, seed) unit, every task writing into one
# shared run folder (main.py --run-dir: the first task creates it, the others check that their
# settings match it; a finished unit is skipped, so a task can simply be submitted again).
#
#   python preprocess.py --dataset fmnist                 # once, on the login node (needs the raw files)
#   sbatch scripts/slurm_sweep.sh                         # from the repository root: the settings below
#   DATASET=mnist MODEL=ae SEEDS="0 1 2 3 4" RUN_DIR=runs/mnist/ae/cluster sbatch --array=0-49 scripts/slurm_sweep.sh
#   sbatch --array=7,23 scripts/slurm_sweep.sh            # only the units of tasks 7 and 23 again
#   python main.py --table runs/fmnist/cascade/cluster    # the table, once every task has ended
#
# Task i runs class i % N_CLASSES with seed number i / N_CLASSES of SEEDS, so the array must be
# 0 .. N_CLASSES x (number of seeds) - 1: 0-29 for 10 classes and 3 seeds (a larger index ends
# without doing anything). #SBATCH lines cannot read variables: change --array here, or give it to
# sbatch, when the number of classes or seeds changes.
#
#SBATCH --job-name=cascade-memory
#SBATCH --array=0-29                # N_CLASSES x number of SEEDS tasks (10 classes x 3 seeds)
#SBATCH --gres=gpu:1                # one GPU per task (drop this line for CPU-only nodes)
#SBATCH --cpus-per-task=4           # CPU threads of a task (also its torch threads, below)
#SBATCH --mem=16G
#SBATCH --time=02:00:00             # per task, i.e. per unit (a 28 x 28 unit takes minutes on one GPU)
#SBATCH --output=slurm-%A_%a.out    # one log per task: job id, task id

set -euo pipefail

# ---- settings: each can be given in the environment (DATASET=mnist sbatch ...) -----------------
DATASET=${DATASET:-fmnist}          # a prepared dataset (python preprocess.py --dataset NAME)
MODEL=${MODEL:-cascade}             # a preset of models/__init__.py
SEEDS=${SEEDS:-"0 1 2"}             # the seeds, separated by spaces
N_CLASSES=${N_CLASSES:-10}          # classes of the dataset (10 for mnist, fmnist, kmnist, cifar10, digits)
RUN_DIR=${RUN_DIR:-runs/$DATASET/$MODEL/cluster}   # the shared run folder (relative: to the repository)
EXTRA=${EXTRA:-}                    # more main.py settings, the same for every task, e.g. "--epochs 50"
REPO=${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}            # the repository: sbatch's working directory by default
PYTHON=${PYTHON:-python}            # e.g. .venv/bin/python
# -------------------------------------------------------------------------------------------------

TASK=${SLURM_ARRAY_TASK_ID:?"not an array task: submit with sbatch --array=0-N (or set SLURM_ARRAY_TASK_ID)"}
read -r -a SEED_LIST <<< "$SEEDS"
N_UNITS=$(( N_CLASSES * ${#SEED_LIST[@]} ))
if (( TASK >= N_UNITS )); then
    echo "task $TASK: no unit (the sweep has $N_UNITS: $N_CLASSES classes x ${#SEED_LIST[@]} seeds)"
    exit 0
fi
CLASS=$(( TASK % N_CLASSES ))
SEED=${SEED_LIST[$(( TASK / N_CLASSES ))]}

cd "$REPO"
# torch's CPU threads: the CPUs Slurm gave this task (not every core of the node)
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-${OMP_NUM_THREADS:-1}}
echo "task $TASK on $(hostname): $DATASET / $MODEL, class $CLASS, seed $SEED -> $RUN_DIR"
# shellcheck disable=SC2086  # EXTRA is split into flags on purpose
exec "$PYTHON" main.py --dataset "$DATASET" --model "$MODEL" --classes "$CLASS" --seeds "$SEED" \
    --run-dir "$RUN_DIR" $EXTRA
