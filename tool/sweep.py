"""Sweeps: every (class, seed) unit of a configuration, each in its own folder.

    runs/<dataset>/<preset>/<timestamp>/
        config.json                 the sweep's settings, environment, command
        table.md, table.csv         the table, rebuilt from the units' results.json by key
        class<c>_seed<s>/
            config.json             full settings, seed, library versions, git commit
            results.json            metrics, per-sample test scores and targets, threshold, epochs,
                                    times (written last: its presence marks the unit finished)
            best.pt                 the weights with the lowest validation loss
            last.pt                 the end-of-epoch checkpoint (deleted once the unit finishes)
            tb/                     tensorboardX logs

Units are independent: any subset can run anywhere (--classes C --seeds S --run-dir DIR), and a
folder's finished units are skipped when it is run again.
"""
import dataclasses
import json
import os
import pickle
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import datetime
from pathlib import Path

import torch
from tqdm import tqdm

from models import PRESETS, build_model, count_parameters
from tool import evaluation, figures
from tool.classical import CLASSICAL, fit_and_score
from tool.config import resolve_device
from tool.datasets import check_dataset_name, load_dataset, scale_images
from tool.prepare import ensure_prepared
from tool.protocol import PROTOCOLS, make_split
from tool.errors import UserError
from tool.io import REPO, atomic_torch_save, atomic_write_json, atomic_write_text, environment
from tool.train import TrainConfig, seed_everything, train_model

# Settings that do not change what a unit computes: they may differ between runs of one folder.
PLACEMENT_KEYS = ("classes", "seeds", "jobs", "device", "output_dir", "data_dir", "draw_figures")


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------
def model_kwargs(config):
    return {"latent_dim": config["latent_dim"], "channels": config["channels"], "n_slots": config["n_slots"],
            "top_k": config["top_k"], "forget_rate": config["forget_rate"], "threshold": config["threshold"],
            "connector": config["connector"], "memae_slots": config["memae_slots"],
            "memae_shrink_threshold": config["memae_shrink_threshold"],
            "memae_entropy_weight": config["memae_entropy_weight"], "kl_weight": config["kl_weight"]}


def build_from_config(config, input_shape):
    try:
        return build_model(config["model"], input_shape, **model_kwargs(config))
    except ValueError as error:
        raise UserError(str(error)) from None


def train_config(config):
    return TrainConfig(epochs=config["epochs"], patience=config["patience"], batch_size=config["batch_size"],
                       lr=config["lr"], weight_decay=config["weight_decay"])


def validate(config):
    """Check every setting that can be checked without the data; raise UserError naming it."""
    check_dataset_name(config["dataset"], config["data_dir"])
    if config["protocol"] not in PROTOCOLS:
        raise UserError(f"unknown protocol '{config['protocol']}'. Valid: {', '.join(PROTOCOLS)}")
    if config["model"] not in PRESETS and config["model"] not in CLASSICAL:
        raise UserError(f"unknown model preset '{config['model']}'. Valid: {', '.join([*PRESETS, *CLASSICAL])}")
    seeds = config["seeds"]
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UserError(f"seeds must be one or more distinct non-negative integers, got {seeds}")
    if config["classes"] is not None and not config["classes"]:
        raise UserError("--classes needs at least one class (or 'none' for all)")
    checks = [("epochs", config["epochs"] >= 1, ">= 1"), ("patience", config["patience"] >= 1, ">= 1"),
              ("batch_size", config["batch_size"] >= 2, ">= 2"), ("lr", config["lr"] > 0, "> 0"),
              ("weight_decay", config["weight_decay"] >= 0, ">= 0"),
              ("val_fraction", 0 < config["val_fraction"] < 1, "in (0, 1)"),
              ("threshold_percentile", 0 < config["threshold_percentile"] < 100, "in (0, 100)"),
              ("latent_dim", config["latent_dim"] >= 1, ">= 1"), ("jobs", config["jobs"] >= 0, ">= 0 (0 = auto)"),
              ("threads", config["threads"] >= 0, ">= 0 (0 = the cores split between the jobs)"),
              ("channels", len(config["channels"]) >= 1 and min(config["channels"]) >= 1, "positive integers")]
    for key, ok, rule in checks:
        if not ok:
            raise UserError(f"{key} must be {rule}, got {config[key]}")
    resolve_device(config["device"])
    if config["model"] in PRESETS:
        build_from_config(config, (1, 28, 28))  # memory settings (lengths, top_k vs slots, rates)


# ---------------------------------------------------------------------------------------------
# Run folders
# ---------------------------------------------------------------------------------------------
def new_run_dir(config):
    base = Path(config["output_dir"])
    base = base if base.is_absolute() else REPO / base
    parent = base / config["dataset"] / config["model"]
    parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1000):  # never reuse a folder: a second run in the same second gets a suffix
        path = parent / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UserError(f"cannot create a new run folder under {parent}")


def read_run_config(run_dir):
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.json). Give a folder that main.py made, "
                        f"e.g. runs/<dataset>/<model>/<timestamp>.")
    try:
        return json.loads(path.read_text())["config"]
    except (ValueError, KeyError) as error:
        raise UserError(f"{path} is corrupt ({error}).") from None


def open_run_dir(run_dir, config):
    """Use `run_dir` for this sweep: create it, or check that its settings match this config."""
    run_dir = Path(run_dir)
    # listed first, hidden names left out: array tasks starting together may find another task's
    # config.json, or its temp file, appearing in a folder they saw empty
    entries = [e for e in run_dir.iterdir() if not e.name.startswith(".")] if run_dir.is_dir() else []
    if (run_dir / "config.json").is_file():
        saved = read_run_config(run_dir)
        differ = [k for k in config if k not in PLACEMENT_KEYS and saved.get(k) != config[k]]
        if differ:
            details = ", ".join(f"{k}: folder {saved.get(k)!r} vs now {config[k]!r}" for k in differ)
            raise UserError(f"{run_dir} was made with other settings ({details}). Use a new folder, or "
                            f"--resume {run_dir} to continue with its own settings.")
        planned = {k: _union(saved.get(k), config[k]) for k in ("classes", "seeds")}
        config = {**config, **planned}
    elif entries:
        raise UserError(f"{run_dir} exists and is not a run folder; give an empty or new folder.")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(run_dir, config)
    return run_dir


def _union(saved, now):
    if saved is None or now is None:
        return None  # "all classes"
    return list(dict.fromkeys([*saved, *now]))


def write_run_config(run_dir, config):
    """The run's config.json; a later run of the same folder (--resume, --run-dir) adds its
    command, time and environment to the history instead of replacing the first one's."""
    path = Path(run_dir) / "config.json"
    history = json.loads(path.read_text()).get("history", []) if path.is_file() else []
    entry = {"command": " ".join(sys.argv), "written": datetime.now().isoformat(), "environment": environment()}
    atomic_write_json(path, {"config": config, **entry, "history": [*history, entry]})


def unit_dir(run_dir, c, s):
    return Path(run_dir) / f"class{c}_seed{s}"


# ---------------------------------------------------------------------------------------------
# One unit
# ---------------------------------------------------------------------------------------------
def run_unit(config, ds, c, seed, run_dir, device, quiet=False):
    """Train and evaluate one (class, seed) unit; returns its results dict (skips a finished one)."""
    folder = unit_dir(run_dir, c, seed)
    if (folder / "results.json").is_file():
        return json.loads((folder / "results.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seed_everything(seed)
    split = make_split(ds, config["protocol"], c, config["val_fraction"], seed)
    if not quiet:
        tqdm.write(f"{config['dataset']} {config['protocol']}: class {c} ({ds.classes[c]}), seed {seed}\n"
                   f"{split.table()}")
    classical = config["model"] in CLASSICAL
    model = None if classical else build_from_config(config, ds.shape).to(device)
    unit_info = {"detector": CLASSICAL[config["model"]]} if classical else {"n_parameters": count_parameters(model)}
    if not quiet:
        tqdm.write(f"model: {config['model']}, " + (CLASSICAL[config["model"]] if classical else
                                                     f"{unit_info['n_parameters']:,} parameters"))
    atomic_write_json(folder / "config.json", {
        "config": config, "class": c, "class_name": ds.classes[c], "seed": seed, "input_shape": list(ds.shape),
        **unit_info, "device": device, "environment": environment(), "dataset_sources": ds.meta.get("sources", []),
        "preprocessing": ds.meta.get("preprocessing")})  # folder datasets: how score.py must read new images
    if classical:
        results = run_classical(config, split, seed)
    else:
        results = train_unit(config, model, split, seed, folder, device, quiet)
    results.update({
        "dataset": config["dataset"], "protocol": config["protocol"], "model": config["model"],
        "class": c, "class_name": ds.classes[c], "seed": seed, **unit_info,
        "total_seconds": round(time.perf_counter() - started, 3), "counts": split.counts, "device": device,
    })
    atomic_write_text(folder / "results.json", results_text(results))
    (folder / "last.pt").unlink(missing_ok=True)
    if config.get("draw_figures", True):  # after results.json: a drawing error only warns
        figures.draw_unit(folder, results, split, model, device)
    if not quiet:
        m = results["metrics"]
        tqdm.write(f"class {c} seed {seed}: AUROC {m['auroc']:.4f}  AUPRC {m['auprc']:.4f}  "
                   f"F1@val {m['f1_val_threshold']:.4f}  best F1 (oracle) {m['f1_oracle']:.4f}  "
                   f"epochs {results['epochs_trained']} (best {results.get('best_epoch', '-')})  "
                   f"{results['total_seconds']:.1f}s")
    return results


def train_unit(config, model, split, seed, folder, device, quiet=False):
    """Train a network unit (resuming from its last checkpoint) and evaluate its best weights.
    quiet (units run in parallel): a log line every 10 epochs instead of every epoch."""
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(folder / "tb"))
    try:
        train_x, val_x = scale_images(split.train, device), scale_images(split.val, device)
        settings = dataclasses.replace(train_config(config), log_every=10 if quiet else 1)
        result = train_model(model, train_x, val_x, settings, folder / "last.pt", seed, writer,
                             desc=f"class {split.target_class} seed {seed}")
    finally:
        writer.close()
    atomic_torch_save({"model": model.state_dict(), "preset": config["model"], "input_shape": list(split.train.shape[1:]),
                       "best_epoch": result.best_epoch}, folder / "best.pt")
    results = evaluate_unit(config, model, split, device)
    results.update({"epochs_trained": result.epochs_trained, "best_epoch": result.best_epoch,
                    "best_val_loss": result.best_val_loss, "stopped_early": result.stopped_early,
                    "train_seconds": round(result.seconds, 3), "history": result.history})
    return results


def run_classical(config, split, seed):
    """Fit a classical detector on the normal training images; threshold and metrics as for networks."""
    flat = [scale_images(x).flatten(1).numpy() for x in (split.train, split.val, split.test)]
    started = time.perf_counter()
    val_scores, test_scores = fit_and_score(config["model"], flat[0], flat[1:], seed)
    results = scored_results(config, val_scores, test_scores, split)
    results.update({"train_seconds": round(time.perf_counter() - started, 3), "epochs_trained": 0})
    return results


def evaluate_unit(config, model, split, device):
    """Threshold from the normal validation images, then the test split, scored once."""
    val_scores = evaluation.anomaly_scores(model, scale_images(split.val, device))
    test_scores = evaluation.anomaly_scores(model, scale_images(split.test, device))
    return scored_results(config, val_scores, test_scores, split)


def scored_results(config, val_scores, test_scores, split):
    """Metrics at the threshold fixed on the validation scores; the per-sample test scores."""
    threshold = evaluation.validation_threshold(val_scores, config["threshold_percentile"])
    metrics = evaluation.compute_metrics(test_scores, split.test_targets.numpy(), threshold)
    return {"metrics": metrics,
            "threshold": {"value": threshold, "percentile_of_validation_scores": config["threshold_percentile"]},
            "scores": [round(float(v), 6) for v in test_scores],
            "targets": split.test_targets.tolist()}


def results_text(results):
    """results.json: the small fields first, indented; then the history, one epoch a line, and the
    per-image scores and targets, one line each (readable, and half the size of indenting them)."""
    long = ("history", "scores", "targets")
    head = json.dumps({k: v for k, v in results.items() if k not in long}, indent=2)
    parts = [head[:-2]]  # without its closing "\n}"
    if "history" in results:
        epochs = ",\n".join("    " + json.dumps(h) for h in results["history"])
        parts.append(f'  "history": [\n{epochs}\n  ]')
    parts += [f'  "{k}": {json.dumps(results[k], separators=(",", ":"))}' for k in long[1:] if k in results]
    return ",\n".join(parts) + "\n}\n"


def load_unit_model(folder, device):
    """(config, model) from a finished or interrupted unit folder's best checkpoint."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "best.pt").is_file():
        raise UserError(f"{folder} is not a trained unit folder (needs config.json and best.pt).")
    try:
        unit = json.loads((folder / "config.json").read_text())
        model = build_from_config(unit["config"], unit["input_shape"])
        ckpt = torch.load(folder / "best.pt", map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise UserError(f"{folder}: its config.json or best.pt is corrupt ({type(error).__name__}). "
                        f"Train the unit again.") from None
    return unit, model.to(device).eval()


# ---------------------------------------------------------------------------------------------
# A sweep
# ---------------------------------------------------------------------------------------------
def unit_threads(config, jobs, device="cpu"):
    """Torch CPU threads per unit: THREADS, or for 0 torch's default (OMP_NUM_THREADS, else the
    cores this process may use) split between the `jobs` units run at once (1 each beside a GPU).
    Float sums depend on the thread count: a fixed THREADS makes scores independent of JOBS."""
    if config["threads"]:
        return config["threads"]
    if jobs == 1:
        return torch.get_num_threads()
    return max(1, torch.get_num_threads() // jobs) if device == "cpu" else 1


def unit_jobs(config, n_units, device):
    """Units run at once: JOBS, or for 0 one per GPU, or on a CPU the cores divided by THREADS."""
    if config["jobs"]:
        jobs = config["jobs"]
    elif device.startswith("cuda"):
        jobs = torch.cuda.device_count() if config["device"] == "auto" else 1
    elif device == "cpu":
        jobs = len(os.sched_getaffinity(0)) // config["threads"] if config["threads"] else 1
    else:
        jobs = 1
    return max(1, min(jobs, n_units))


def _worker_init(threads, devices, counter):
    torch.set_num_threads(threads)
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    os.environ["CASCADE_WORKER_DEVICE"] = devices[index % len(devices)]


def _worker_unit(config, c, seed, run_dir):
    device = os.environ.get("CASCADE_WORKER_DEVICE", "cpu")
    ds = load_dataset(config["dataset"], config["data_dir"])
    return run_unit(config, ds, c, seed, run_dir, device, quiet=True)


def run_sweep(config, run_dir):
    """Run every unfinished (class, seed) unit of `config` in `run_dir`; return the run folder."""
    ds = ensure_prepared(config["dataset"], config["data_dir"])
    classes = ds.class_list(config["classes"])
    units = [(c, s) for s in config["seeds"] for c in classes
             if not (unit_dir(run_dir, c, s) / "results.json").is_file()]
    done = len(classes) * len(config["seeds"]) - len(units)
    print(f"run folder: {run_dir}\n{len(units)} unit(s) to run" + (f", {done} already finished" if done else ""))
    device = resolve_device(config["device"])
    jobs = unit_jobs(config, len(units), device)
    if jobs == 1:
        torch.set_num_threads(unit_threads(config, 1, device))
        for c, s in units:
            run_unit(config, ds, c, s, run_dir, device)
    else:
        _run_parallel(config, units, run_dir, device, jobs)
    return run_dir


def _run_parallel(config, units, run_dir, device, jobs):
    import multiprocessing as mp

    if device.startswith("cuda") and torch.cuda.device_count() > 1 and config["device"] == "auto":
        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    else:
        devices = [device]
    threads = unit_threads(config, jobs, device)
    print(f"{jobs} units at a time on {', '.join(devices)}, {threads} CPU thread(s) each")
    context = mp.get_context("spawn")
    counter = context.Value("i", 0)
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init,
                             initargs=(threads, devices, counter)) as pool:
        futures = {pool.submit(_worker_unit, config, c, s, str(run_dir)): (c, s) for c, s in units}
        try:
            with tqdm(total=len(futures), desc="units", unit="unit") as bar:
                for future in as_completed(futures):
                    c, s = futures[future]
                    m = future.result()["metrics"]
                    tqdm.write(f"class {c} seed {s}: AUROC {m['auroc']:.4f}  AUPRC {m['auprc']:.4f}")
                    bar.update(1)
        except BaseException:  # a unit failed or Ctrl-C: start no further unit, let running ones end
            pool.shutdown(wait=True, cancel_futures=True)
            raise


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------
def planned_units(run_dir, config, n_classes=None):
    """Classes and seeds of a run folder: those its settings plan plus those found on disk."""
    found = [tuple(int(v) for v in p.name.removeprefix("class").split("_seed"))
             for p in Path(run_dir).glob("class*_seed*") if p.is_dir()]
    planned = range(n_classes or 0) if config["classes"] is None else config["classes"]
    classes = sorted({*planned, *(c for c, _ in found)})
    seeds = list(dict.fromkeys([*config["seeds"], *sorted({s for _, s in found})]))
    return classes, seeds


def class_names_of(config):
    """The class names of a run's dataset (None when it is not prepared here)."""
    path = Path(config["data_dir"] or REPO / "datasets") / config["dataset"] / "processed" / "meta.json"
    return json.loads(path.read_text())["classes"] if path.is_file() else None


def make_table(run_dir, results=None, decimals=2, write=True):
    """Print the run's table, built by key from its results; write table.md / table.csv beside it."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    results = evaluation.load_results(run_dir) if results is None else results
    class_names = class_names_of(config)
    classes, seeds = planned_units(run_dir, config, len(class_names) if class_names else None)
    class_names = class_names or [str(c) for c in range(max(classes, default=-1) + 1)]
    header, rows = evaluation.table_rows(results, classes, class_names, seeds, decimals)
    published = evaluation.published_rows(config["dataset"]) if config["protocol"] == "one-anomalous-class" else []
    title = (f"{config['dataset']} / {config['model']} / {config['protocol']}: metrics in %, "
             f"mean ± std over seeds {seeds}")
    print(title)
    print(evaluation.render_table(header, rows, published))
    if write:
        atomic_write_text(run_dir / "table.md", f"{title}\n\n" + evaluation.to_markdown(header, rows + published))
        atomic_write_text(run_dir / "table.csv", evaluation.to_csv(results, classes, class_names, seeds))
        if config.get("draw_figures", True):
            figures.draw_run(run_dir, results, class_names, title)
    return header, rows


def eval_only(run_dir, device_name="auto"):
    """Re-evaluate every unit's best checkpoint without training and print the table (4 decimals)."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    device = resolve_device(device_name)
    torch.set_num_threads(unit_threads(config, 1, device))  # as in training: float sums depend on it
    ds = load_dataset(config["dataset"], config["data_dir"])
    results, mismatches = {}, []
    folders = sorted(p for p in run_dir.glob("class*_seed*") if (p / "best.pt").is_file())
    if not folders:
        raise UserError(f"{run_dir} holds no trained unit (no class*_seed*/best.pt).")
    for folder in tqdm(folders, desc="re-evaluating", unit="unit", leave=False):
        unit, model = load_unit_model(folder, device)
        c, seed = unit["class"], unit["seed"]
        split = make_split(ds, unit["config"]["protocol"], c, unit["config"]["val_fraction"], seed)
        evaluated = evaluate_unit(unit["config"], model, split, device)
        results[(c, seed)] = evaluated
        saved = folder / "results.json"
        if saved.is_file() and json.loads(saved.read_text())["metrics"] != evaluated["metrics"]:
            mismatches.append(folder.name)
    make_table(run_dir, results, decimals=4, write=False)
    if mismatches:
        print(f"differs from the saved results.json: {', '.join(mismatches)} (other machine or library version?)")
    else:
        print(f"every re-evaluated unit matches its saved results.json exactly ({len(results)} units)")
    return results


def draw_figures(run_dir, device_name="auto"):
    """Draw a run's figures again (tool/figures.py) from its results.json files and checkpoints."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    device = resolve_device(device_name)
    ds = load_dataset(config["dataset"], config["data_dir"])
    folders = sorted(p for p in run_dir.glob("class*_seed*") if (p / "results.json").is_file())
    if not folders:
        raise UserError(f"{run_dir} holds no finished unit (no class*_seed*/results.json).")
    for folder in tqdm(folders, desc="drawing", unit="unit", leave=False):
        results = json.loads((folder / "results.json").read_text())
        split = make_split(ds, config["protocol"], results["class"], config["val_fraction"], results["seed"])
        model = load_unit_model(folder, device)[1] if (folder / "best.pt").is_file() else None
        figures.draw_unit(folder, results, split, model, device)
    make_table(run_dir)  # the table again, and roc_all.png
    print(f"figures drawn in {run_dir} ({len(folders)} units)")
