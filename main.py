"""Train and evaluate cascade-memory autoencoders; print AUROC tables.

    python main.py                                   # the embedded default: digits, every class, 3 seeds
    python main.py --dataset fmnist --classes 0 3 --seeds 0 --model ae
    python main.py --resume runs/fmnist/cascade/20261128-120000     # finish an interrupted sweep
    python main.py --eval-only runs/fmnist/cascade/20261128-120000  # re-evaluate its checkpoints
    python main.py --table runs/fmnist/cascade/20261128-120000      # print its table from results.json
    python main.py --compare results/fmnist                          # every model of a dataset in one table
    python main.py --export runs/fmnist/cascade/20261128-120000     # its results, no checkpoints, to results/
    python main.py --figures runs/fmnist/cascade/20261128-120000    # draw its figures again
    python main.py --leakage runs/fmnist/cascade/20261128-120000    # how much each class mixes with the others

Edit the constants below to reproduce a table, or override any of them on the command line
(EPOCHS -> --epochs, TOP_K -> --top-k 15 5). Every run lands in its own new folder under
OUTPUT_DIR; nothing is ever overwritten. Below the constants, `run_trial` is the experiment: one
class as the anomaly, one seed, from the split to the metrics.
"""
# ------------------------------------------------------------------------------------------------
# Settings: the paper's by default (docs/method.md). Each can be overridden on the command line.
# ------------------------------------------------------------------------------------------------
DATASET = "digits"  # mnist | fmnist | kmnist | cifar10 | digits (embedded, no download) | a folder dataset
PROTOCOL = "one-anomalous-class"  # the paper's: one class anomalous, the rest normal; or one-normal-class (Deep SVDD / MemAE)
CLASSES = None  # classes to run, by index or name; None = every class of the dataset
SEEDS = [0, 1, 2]  # fixed seeds, one trial per (class, seed); tables give mean ± std over them
MODEL = "cascade"  # preset: cascade | cascade-mlp | cascade-released | memae | ae | ae-mlp | vae (models/__init__.py), or a classical detector: knn | iforest | ocsvm (tool/classical.py)
# cascade memory, one value per stage (paper: prior memory 50 slots, k = 15, forget rate 0.1; posterior
# memory 1000 slots, k = 5, forget rate 0.5). Fewer values = fewer stages; none = a plain autoencoder.
N_SLOTS = [50, 1000]  # slots per stage (N_H, N_C)
TOP_K = [15, 5]  # slots each latent vector is re-written from (k)
FORGET_RATE = [0.1, 0.5]  # share of slots forgotten per training pass (nu); 0 = no forgetting
ADDRESSING_THRESHOLD = 0.0  # memory addressing: kept cosine similarities at or below it get weight 0 (released code: ReLU, i.e. 0)
CONNECTOR = "leaky_relu"  # activation after BatchNorm1d behind each stage: leaky_relu (released code) | relu (paper figure)
LATENT_DIM = 128  # D, width of the latent vector and of every slot (released code: 128)
CHANNELS = [32, 64, 128]  # conv backbone: channels of the strided convolutions (as many as the image size allows)
MEMAE_SLOTS = 100  # MemAE baseline: memory size N (MemAE paper, image experiments)
MEMAE_SHRINK_THRESHOLD = None  # MemAE hard-shrinkage lambda; None = 1 / MEMAE_SLOTS
MEMAE_ENTROPY_WEIGHT = 0.0002  # MemAE entropy loss weight (MemAE paper)
KL_WEIGHT = 1.0  # VAE baseline: weight of the KL term (per pixel, like the MSE)
EPOCHS = 100  # most epochs per trial (the paper's count is not public; early stopping ends most runs sooner)...
MIN_STEPS = 2000  # ...unless they make fewer optimiser steps than this (digits: 4 batches an epoch, so 500 epochs)
PATIENCE = 10  # early stopping: epochs without a lower validation loss (released code: 10)...
PATIENCE_STEPS = 1000  # ...and at least this many optimiser steps without one (digits has 4 batches an epoch; chosen on digits-tune, results/tuning.md)
BATCH_SIZE = 256  # (released code: 256)
LR = 1e-3  # Adam learning rate (released code: 1e-3)
WEIGHT_DECAY = 0.0  # Adam weight decay (released code: none)
PRECISION = "fp32"  # fp32 | bf16: bfloat16 autocast for training, faster on a CPU with AVX-512 bf16 and on GPUs (README, Speed)
CHECKPOINT_SECONDS = 60  # last.pt after the first epoch, then at most every this many seconds (0: every epoch)
COMPILE = False  # torch.compile the encoder and decoder for training (on a CPU it costs more than it saves; see README, Speed)
VAL_FRACTION = 0.1  # share of the normal training images held out for validation (paper: 10%)
THRESHOLD_PERCENTILE = 95.0  # decision threshold = this percentile of the validation scores (for F1 @ val.)
SCORE = "recon"  # the score tables and figures show: recon (the paper's) | latent-knn | latent-lof | memory | fused | fused-lof | hidden-knn | hidden-lof | fused-hidden (MLP encoders; docs/method.md); knn, iforest, ocsvm show their own; --compare: all = a row per score
DEVICE = "auto"  # auto = CUDA, then Apple MPS, then CPU; or cpu, cuda, cuda:1, mps
JOBS = 0  # trials run at once; 0 = auto: one per CPU core / THREADS on a CPU, one per GPU on GPUs
THREADS = 1  # torch CPU threads per trial; 1 keeps scores independent of JOBS and of the core count; 0 = torch default
DRAW_FIGURES = True  # ROC, score histogram, reconstructions, slot usage beside every trial and run (tool/figures.py)
OUTPUT_DIR = "runs"  # runs land in OUTPUT_DIR/<dataset>/<model>/<timestamp>/ (relative = beside this file)
DATA_DIR = None  # datasets folder; None = datasets/ beside this file

import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from datetime import datetime  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from models import ModelConfig, build_model, count_parameters  # noqa: E402
from tool import figures, report  # noqa: E402
from tool.classical import CLASSICAL, fit_and_score  # noqa: E402
from tool.datasets import load_dataset, scale_images  # noqa: E402
from tool.errors import UserError, cli  # noqa: E402
from tool.evaluation import compute_metrics, hidden_bank, latent_bank, network_scores, validation_threshold  # noqa: E402
from tool.io import git_commit  # noqa: E402
from tool.leakage import run_leakage  # noqa: E402
from tool.parallel import run_trials, trial_threads  # noqa: E402
from tool.prepare import ensure_prepared  # noqa: E402
from tool.protocol import check_trials, make_split  # noqa: E402
from tool.results import read_results, write_results  # noqa: E402
from tool.runs import (is_finished, load_trial_model, new_run_dir, open_run_dir, read_run_config,  # noqa: E402
                       trial_dir, trial_lock, write_checkpoint, write_scoring, write_trial_config)
from tool.settings import (check_model_size, check_score, describe, make_parser, overrides_from,  # noqa: E402
                           resolve_device, validate)
from tool.train import TrainConfig, cpu_lacks_bf16, seed_everything, train_model  # noqa: E402

DEFAULTS = {name.lower(): value for name, value in dict(globals()).items() if name.isupper()}


# ------------------------------------------------------------------------------------------------
# The experiment: one trial = one class as the anomaly (or as the normal class), one seed
# ------------------------------------------------------------------------------------------------
def run_trial(config, ds, target_class, seed, run_dir, device, quiet=False):
    """Train and evaluate one trial into run_dir/class<c>_seed<s>/ and return its results (a
    finished trial is read back, not run again; one that another process is running is skipped:
    None). quiet: a log line every 10 epochs, not every one."""
    folder = trial_dir(run_dir, target_class, seed)
    if is_finished(folder):
        return read_results(folder)
    with trial_lock(folder) as held:  # a trial runs in one process at a time (--run-dir shared by jobs)
        if not held:
            print(f"class {target_class} seed {seed}: skipped here, another process is running it (it holds "
                  f"{folder / '.lock'}); python main.py --table {run_dir} shows it once it has finished")
            return None
        if is_finished(folder):  # finished by another process since the check above
            return read_results(folder)
        return _run_trial(config, ds, target_class, seed, run_dir, device, quiet)


def _run_trial(config, ds, target_class, seed, run_dir, device, quiet):
    folder = trial_dir(run_dir, target_class, seed)
    started = time.perf_counter()
    log = (lambda text: None) if quiet else tqdm.write
    seed_everything(seed)
    split = make_split(ds, config["protocol"], target_class, config["val_fraction"], seed)
    log(f"{config['dataset']} {config['protocol']}: class {target_class} ({ds.classes[target_class]}), "
        f"seed {seed}\n{split.table()}")
    if config["model"] in CLASSICAL:
        model, about = None, {"detector": CLASSICAL[config["model"]]}
    else:
        model = build_model(config["model"], ds.shape, ModelConfig.from_settings(config)).to(device)
        about = {"n_parameters": count_parameters(model)}
    log(f"model: {config['model']}, " + about.get("detector", f"{about.get('n_parameters', 0):,} parameters"))
    write_trial_config(folder, config, ds, target_class, seed, device, about)

    if model is None:  # a classical detector: fitted on the normal training images, then scored
        scores, trained = fit_classical(config, split, seed)
    else:  # a network: trained on the normal training images, stopped early on the validation images
        trained = fit(config, model, split, seed, folder, device, log_every=10 if quiet else 1)
        scores, kept = score(model, split, seed, device)
        write_scoring(folder, kept["bank"], kept["hidden"])  # bank.pt: what latent-knn needs for new images
        trained["fusion"] = kept["fusion"]
    results = {**evaluate(config, scores, split), **trained, **about,
               "dataset": config["dataset"], "protocol": config["protocol"], "model": config["model"],
               "class": target_class, "class_name": ds.classes[target_class], "seed": seed,
               "total_seconds": round(time.perf_counter() - started, 3), "counts": split.counts, "device": device}
    write_results(folder, results, split.test_targets, {name: test for name, (_, test) in scores.items()})
    (folder / "last.pt").unlink(missing_ok=True)
    if config["draw_figures"]:
        figures.draw_trial(folder, results, config["score"], split, model, device)
    log(f"class {target_class} seed {seed}: " + "  ".join(
        f"{name} AUROC {m['auroc']:.4f}" for name, m in results["metrics"].items())
        + f"  epochs {results['epochs_trained']} (best {results.get('best_epoch', '-')})  {results['total_seconds']:.1f}s")
    return results


def fit(config, model, split, seed, folder, device, log_every=1):
    """Train `model` on the split's normal training images; early stopping and the best weights
    come from its normal validation images (the test images never reach training)."""
    from tensorboardX import SummaryWriter

    # resuming, train_model logs the checkpoint's epochs again: purge_step=1 hides what killed processes logged
    resumed = (folder / "last.pt").exists()
    with SummaryWriter(str(folder / "tb"), purge_step=1 if resumed else None) as writer:
        result = train_model(model, scale_images(split.train, device), scale_images(split.val, device),
                             TrainConfig.from_settings(config), folder / "last.pt", seed, writer,
                             desc=f"class {split.target_class} seed {seed}", log_every=log_every)
    write_checkpoint(folder, model, config["model"], split.train.shape[1:], result.best_epoch)
    return {"epochs_trained": result.epochs_trained, "best_epoch": result.best_epoch,
            "best_val_loss": result.best_val_loss, "stopped_early": result.stopped_early,
            "train_seconds": round(result.seconds, 3), "history": result.history}


def fit_classical(config, split, seed):
    """({detector: (validation scores, test scores)}, timing) of a classical detector fitted on
    the normal training images (pixels scaled as for the networks, flattened)."""
    flat = [scale_images(x).flatten(1).numpy() for x in (split.train, split.val, split.test)]
    started = time.perf_counter()
    val_scores, test_scores = fit_and_score(config["model"], flat[0], flat[1:], seed)
    return ({config["model"]: (val_scores, test_scores)},
            {"train_seconds": round(time.perf_counter() - started, 3), "epochs_trained": 0})


def score(model, split, seed, device):
    """Every score of a trained network (tool.evaluation.SCORES) on the normal validation images
    and on the test split: ({score: (validation scores, test scores)}, what scoring keeps: the
    latent-knn bank of normal training codes, drawn with the seed, the hidden-knn bank of an MLP
    encoder's hidden features, and the fusion stats)."""
    bank, hidden = latent_bank(model, split.train, seed, device), hidden_bank(model, split.train, seed, device)
    scores, stats = network_scores(model, scale_images(split.val, device), scale_images(split.test, device), bank,
                                   hidden)
    return scores, {"bank": bank, "hidden": hidden, "fusion": stats}


def evaluate(config, scores, split):
    """Per score: the decision threshold from its normal validation scores (fixed before the test
    split is looked at), then its metrics on the test split."""
    targets = split.test_targets.numpy()
    thresholds = {name: validation_threshold(val, config["threshold_percentile"]) for name, (val, _) in scores.items()}
    return {"metrics": {name: compute_metrics(test, targets, thresholds[name]) for name, (_, test) in scores.items()},
            "thresholds": thresholds, "threshold_percentile": config["threshold_percentile"]}


def reevaluate(run_dir, device_name="auto", score_choice=None):
    """--eval-only: score every trained trial's best.pt again with this code's scores, without
    training; print the table (4 decimals, of SCORE `score_choice`). A finished trial whose scores
    this code computes differently, or which lacks some, gets them written into its results.json
    and scores.npz; the values they replace are kept under "evaluations", with this code's commit."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    device = resolve_device(device_name)
    torch.set_num_threads(trial_threads(config, 1, device))  # as in training: float sums depend on it
    ds = load_dataset(config["dataset"], config["data_dir"])
    folders = sorted(p for p in run_dir.glob("class*_seed*") if (p / "best.pt").is_file())
    if not folders:
        raise UserError(f"{run_dir} holds no trained trial (no class*_seed*/best.pt).")
    results, changed = {}, {}
    for folder in tqdm(folders, desc="re-evaluating", unit="trial", leave=False, disable=None):
        trial, model = load_trial_model(folder, device)
        settings = {**DEFAULTS, **trial["config"]}
        split = make_split(ds, settings["protocol"], trial["class"], settings["val_fraction"], trial["seed"])
        scores, kept = score(model, split, trial["seed"], device)
        evaluated = evaluate(settings, scores, split)
        results[(trial["class"], trial["seed"])] = {**trial, **evaluated}
        if not is_finished(folder):
            continue  # an interrupted trial: scored here, but its record is written when it finishes
        saved = read_results(folder)
        differ = [name for name, m in evaluated["metrics"].items() if saved["metrics"].get(name) != m]
        if differ:
            changed[folder.name] = differ
            entry = {"commit": git_commit(), "written": datetime.now().isoformat(), "scores": differ,
                     "previous": {name: saved["metrics"][name] for name in differ if name in saved["metrics"]}}
            write_scoring(folder, kept["bank"], kept["hidden"])
            write_results(folder, {**saved, **evaluated, "fusion": kept["fusion"],
                                   "evaluations": [*saved.get("evaluations", []), entry]},
                          split.test_targets, {name: test for name, (_, test) in scores.items()})
    report.run_table(run_dir, results, decimals=4, write=False, score=score_choice)
    if changed:
        print(f"scored anew and written ({len(changed)} of {len(results)} trials; the values replaced are kept "
              f"under 'evaluations' in results.json): " + "; ".join(f"{k}: {', '.join(v)}" for k, v in changed.items()))
    else:
        print(f"every re-evaluated trial matches its saved results.json exactly ({len(results)} trials)")
    return results


# ------------------------------------------------------------------------------------------------
# The command line: a sweep of trials, or an action on a run folder
# ------------------------------------------------------------------------------------------------
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
    what.add_argument("--leakage", metavar="RUN_DIR",
                      help="per class, how much it mixes with the other classes: in pixels and in the run's latent space")
    actions.add_argument("--ensemble", action="store_true",
                         help="with --compare: after each network row of several seeds, their seed ensemble "
                              "(the mean of the seeds' standardised scores)")
    actions.add_argument("--run-dir", metavar="DIR",
                         help="use DIR as the sweep folder (shared by cluster jobs; finished trials are skipped)")
    args = parser.parse_args(argv)
    return args, overrides_from(args, DEFAULTS)


def refuse(given, allowed, action, run_dir_given=False):
    extra = set(given) - set(allowed)
    if extra or run_dir_given:
        flags = ", ".join("--" + k.replace("_", "-") for k in sorted(extra)) or "--run-dir"
        raise UserError(f"{action} takes its settings from the run folder; drop {flags}")


def run(argv=None):
    """Everything main.py does; returns the run folder (or what the action returns)."""
    args, given = parse(argv)
    if "score" in given and (args.compare or args.eval_only or args.table or args.figures):
        check_score(given["score"], allow_all=not args.figures)
    if args.ensemble and not args.compare:
        raise UserError("--ensemble goes with --compare DIR (a row more per network run of several seeds).")
    if args.compare or args.export:
        refuse(given, ("score",) if args.compare else (), "--compare" if args.compare else "--export", args.run_dir)
        return report.compare(args.compare, given.get("score", DEFAULTS["score"]), args.ensemble) if args.compare \
            else report.export(args.export)
    if args.leakage:
        refuse(given, ("device",), "--leakage", args.run_dir)
        return run_leakage(args.leakage, resolve_device(given.get("device", "auto")))
    if args.eval_only or args.table or args.figures:
        refuse(given, ("device", "score"), "--eval-only, --table and --figures each", args.run_dir)
        if args.table:
            return report.run_table(args.table, score=given.get("score"))
        if args.figures:
            return figures.redraw(args.figures, resolve_device(given.get("device", "auto")), given.get("score"))
        return reevaluate(args.eval_only, given.get("device", "auto"), given.get("score"))
    if args.resume:
        refuse(given, ("device", "jobs", "classes", "seeds"), "--resume", args.run_dir)
        config = {**DEFAULTS, **read_run_config(args.resume), **given}
    else:
        config = {**DEFAULTS, **given}
    validate(config)
    ds = ensure_prepared(config["dataset"], config["data_dir"])
    if config["classes"] is not None:
        config["classes"] = ds.class_list(config["classes"])
    # every planned trial's split, and the model at the data's size, checked before anything is created
    check_trials(ds, config["protocol"], ds.class_list(config["classes"]), config["val_fraction"])
    check_model_size(config, ds.shape)
    print(describe(config, DEFAULTS))
    device = resolve_device(config["device"])
    print(f"device: {device}")
    if config["precision"] == "bf16" and cpu_lacks_bf16(device):
        print("warning: this CPU has no AVX-512 bf16 or AMX: bf16 is emulated here and trains far slower "
              "than fp32 (8.6x for cascade on one such CPU); use --precision fp32", file=sys.stderr)
    if args.resume or args.run_dir:
        run_dir = open_run_dir(args.resume or args.run_dir, config)
    else:
        run_dir = new_run_dir(config)
    trials = [(c, s) for s in config["seeds"] for c in ds.class_list(config["classes"])]
    todo = [(c, s) for c, s in trials if not is_finished(trial_dir(run_dir, c, s))]
    done = len(trials) - len(todo)
    print(f"run folder: {run_dir}\n{len(todo)} trial(s) to run" + (f", {done} already finished" if done else ""))
    run_trials(run_trial, config, ds, todo, run_dir, device)
    report.run_table(run_dir)
    print(f"results: {run_dir}")
    return run_dir


main = cli(run)

if __name__ == "__main__":
    main(sys.argv[1:])
