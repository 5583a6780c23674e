"""Train and evaluate cascade-memory autoencoders; print AUROC tables.

    python main.py                                   # the embedded default: digits, every class, 3 seeds
    python main.py --dataset fmnist --classes 0 3 --seeds 0 --model ae
    python main.py --resume runs/fmnist/cascade/20261128-120000     # finish an interrupted sweep
    python main.py --eval-only runs/fmnist/cascade/20261128-120000  # re-evaluate its checkpoints
    python main.py --table runs/fmnist/cascade/20261128-120000      # print its table from results.json
    python main.py --compare results/fmnist                          # every model of a dataset in one table
    python main.py --export runs/fmnist/cascade/20261128-120000     # its results, no checkpoints, to results/
    python main.py --figures runs/fmnist/cascade/20261128-120000    # draw its figures again (tool/figures.py)

Edit the constants below to reproduce a table, or override any of them on the command line
(EPOCHS -> --epochs, TOP_K -> --top-k 15 5). Every run lands in its own new folder under
OUTPUT_DIR; nothing is ever overwritten.
"""
# ------------------------------------------------------------------------------------------------
# Settings: the paper's by default (PAPER.md). Each can be overridden on the command line.
# ------------------------------------------------------------------------------------------------
DATASET = "digits"  # mnist | fmnist | kmnist | cifar10 | digits (embedded, no download) | a folder dataset
PROTOCOL = "one-anomalous-class"  # the paper's: one class anomalous, the rest normal; or one-normal-class (Deep SVDD / MemAE)
CLASSES = None  # classes to run, by index or name; None = every class of the dataset
SEEDS = [0, 1, 2]  # fixed seeds, one unit per (class, seed); tables give mean ± std over them
MODEL = "cascade"  # preset: cascade | cascade-mlp | cascade-released | memae | ae | ae-mlp | vae (models/__init__.py), or a classical detector: knn | iforest | ocsvm (tool/classical.py)
# cascade memory, one value per stage (paper: prior memory 50 slots, k = 15, forget rate 0.1; posterior
# memory 1000 slots, k = 5, forget rate 0.5). Fewer values = fewer stages; none = a plain autoencoder.
N_SLOTS = [50, 1000]  # slots per stage (N_H, N_C)
TOP_K = [15, 5]  # slots each latent vector is re-written from (k)
FORGET_RATE = [0.1, 0.5]  # share of slots forgotten per training pass (nu); 0 = no forgetting
THRESHOLD = 0.0  # addressing threshold on the kept cosine similarities (released code: ReLU, i.e. 0)
CONNECTOR = "leaky_relu"  # activation after BatchNorm1d behind each stage: leaky_relu (released code) | relu (paper figure)
LATENT_DIM = 128  # D, width of the latent vector and of every slot (released code: 128)
CHANNELS = [32, 64, 128]  # conv backbone: channels of the strided convolutions (as many as the image size allows)
MEMAE_SLOTS = 100  # MemAE baseline: memory size N (MemAE paper, image experiments)
MEMAE_SHRINK_THRESHOLD = None  # MemAE hard-shrinkage lambda; None = 1 / MEMAE_SLOTS
MEMAE_ENTROPY_WEIGHT = 0.0002  # MemAE entropy loss weight (MemAE paper)
KL_WEIGHT = 1.0  # VAE baseline: weight of the KL term (per pixel, like the MSE)
EPOCHS = 100  # most epochs per unit (the paper's count is not public; early stopping ends most runs sooner)
PATIENCE = 10  # early stopping: epochs without a lower validation loss (released code: 10)
BATCH_SIZE = 256  # (released code: 256)
LR = 1e-3  # Adam learning rate (released code: 1e-3)
WEIGHT_DECAY = 0.0  # Adam weight decay (released code: none)
VAL_FRACTION = 0.1  # share of the normal training images held out for validation (paper: 10%)
THRESHOLD_PERCENTILE = 95.0  # decision threshold = this percentile of the validation scores (for F1 @ val.)
DEVICE = "auto"  # auto = CUDA, then Apple MPS, then CPU; or cpu, cuda, cuda:1, mps
JOBS = 0  # units run at once; 0 = auto: one per CPU core / THREADS on a CPU, one per GPU on GPUs
THREADS = 1  # torch CPU threads per unit; 1 keeps scores independent of JOBS and of the core count; 0 = torch default
DRAW_FIGURES = True  # ROC, score histogram, reconstructions, slot usage beside every unit and run (tool/figures.py)
OUTPUT_DIR = "runs"  # runs land in OUTPUT_DIR/<dataset>/<model>/<timestamp>/ (relative = beside this file)
DATA_DIR = None  # datasets folder; None = datasets/ beside this file
# ------------------------------------------------------------------------------------------------

import re  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from tool.config import describe, make_parser, overrides_from, resolve_device  # noqa: E402
from tool.errors import UserError, cli  # noqa: E402
from tool.prepare import ensure_prepared  # noqa: E402

DEFAULTS = {name.lower(): value for name, value in dict(globals()).items() if name.isupper()}


def setting_comments():
    """Each constant's comment above, as the help text of its command-line flag."""
    line = re.compile(r"^([A-Z_]+) = .*?  # (.*)$")
    return {m[1].lower(): m[2] for text in Path(__file__).read_text().splitlines() if (m := line.match(text))}


def parse(argv=None):
    parser = make_parser(DEFAULTS, __doc__, setting_comments())
    actions = parser.add_argument_group("actions (instead of a new sweep)")
    what = actions.add_mutually_exclusive_group()
    what.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted sweep with its own settings")
    what.add_argument("--eval-only", metavar="RUN_DIR", help="re-evaluate a run's checkpoints, print its table")
    what.add_argument("--table", metavar="RUN_DIR", help="print a run's table from its results.json files")
    what.add_argument("--compare", metavar="DIR",
                      help="one table of every run folder below DIR, beside the published figures")
    what.add_argument("--export", metavar="RUN_DIR",
                      help="copy a run's results (no checkpoints or logs) to results/<dataset>/<model>/")
    what.add_argument("--figures", metavar="RUN_DIR",
                      help="draw a run's figures again from its results and checkpoints")
    actions.add_argument("--run-dir", metavar="DIR",
                         help="use DIR as the sweep folder (shared by cluster jobs; finished units are skipped)")
    args = parser.parse_args(argv)
    return args, overrides_from(args, DEFAULTS)


def run(argv=None):
    """Everything main.py does; returns the run folder (or the results for --eval-only)."""
    from tool import sweep

    args, given = parse(argv)
    if args.compare or args.export:
        from tool import report

        return report.compare(args.compare) if args.compare else report.export(args.export)
    if args.eval_only or args.table or args.figures:
        extra = set(given) - {"device"}
        if extra or args.run_dir:
            raise UserError(f"--eval-only, --table and --figures take their settings from the run folder; "
                            f"drop {', '.join('--' + k.replace('_', '-') for k in sorted(extra)) or '--run-dir'}")
        if args.table:
            sweep.read_run_config(args.table)
            return sweep.make_table(args.table)
        if args.figures:
            return sweep.draw_figures(args.figures, given.get("device", "auto"))
        return sweep.eval_only(args.eval_only, given.get("device", "auto"))
    if args.resume:
        extra = set(given) - {"device", "jobs", "classes", "seeds"}
        if extra or args.run_dir:
            raise UserError(f"--resume continues with the run's own settings; drop "
                            f"{', '.join('--' + k.replace('_', '-') for k in sorted(extra)) or '--run-dir'}")
        config = {**DEFAULTS, **sweep.read_run_config(args.resume), **given}
    else:
        config = {**DEFAULTS, **given}
    sweep.validate(config)
    ds = ensure_prepared(config["dataset"], config["data_dir"])
    if config["classes"] is not None:
        config["classes"] = ds.class_list(config["classes"])
    print(describe(config, DEFAULTS))
    print(f"device: {resolve_device(config['device'])}")
    run_dir = args.resume or args.run_dir
    run_dir = sweep.open_run_dir(run_dir, config) if run_dir else sweep.new_run_dir(config)
    if not args.resume and not args.run_dir:
        sweep.write_run_config(run_dir, config)
    sweep.run_sweep(config, run_dir)
    sweep.make_table(run_dir)
    print(f"results: {run_dir}")
    return run_dir


main = cli(run)

if __name__ == "__main__":
    main(sys.argv[1:])
