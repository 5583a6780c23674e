"""A trial's result files: results.json (every score's metrics and threshold, the validation
statistics, the training history; written last, so its presence marks the trial finished) and
scores.npz (every score of every test image but the fused ones, float16: read_scores rebuilds
those from their members and the statistics). Each file is checked once, where it is read,
against what every reader of it needs (RESULTS_SCHEMA); the readers then trust it."""
import io
import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np

from tool.errors import UserError
from tool.evaluation import METRICS
from tool.io import atomic_write_bytes, atomic_write_text, file_sha256, open_archive, read_json
from tool.scores import FUSIONS, fusions, is_mean_and_spread, recommended


def results_text(results):
    """results.json: the small fields indented (the metrics to the last bit), the training history
    by columns, one quantity a line (history_columns), its floats to 4 significant digits (the
    losses; best_val_loss keeps every digit) or 3 (HISTORY_DIGITS)."""
    head = json.dumps({k: v for k, v in results.items() if k != "history"}, indent=2)
    if "history" not in results:
        return head + "\n"
    history = results["history"]
    columns = history_columns(history) if isinstance(history, list) else history
    lines = ",\n".join(f"    {json.dumps(str(name))}: "
                        f"{json.dumps(_rounded(values, HISTORY_DIGITS.get(name, 4)), separators=(',', ':'))}"
                        for name, values in columns.items())
    return head[:-2] + (f',\n  "history": {{\n{lines}\n  }}\n}}\n' if lines else ',\n  "history": {}\n}\n')


def history_columns(epochs):
    """The training history, one dict per epoch (TrainResult.history), as one list per quantity:
    {"epoch": [1, 2, ...], "val_loss": [...], "memory": [{"entropy": [...], ...} for each stage]};
    a quantity an epoch lacks is null there. An empty history is {}."""
    columns = {}
    for name in dict.fromkeys(name for epoch in epochs for name in epoch):  # every key, first seen first
        values = [epoch.get(name) for epoch in epochs]
        first = values[0]
        if isinstance(first, list) and all(isinstance(v, list) and len(v) == len(first)
                                           and all(isinstance(stage, dict) for stage in v) for v in values):
            columns[name] = [history_columns([v[stage] for v in values]) for stage in range(len(first))]
        else:
            columns[name] = values
    return columns


HISTORY_DIGITS = {"seconds": 3, "memory": 3}  # significant digits kept of a history quantity (others: 4)


def _rounded(value, digits):
    """`value` with every float in it to `digits` significant digits."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    return [_rounded(v, digits) for v in value] if isinstance(value, list) else value


def write_results(folder, results, targets, test_scores):
    """scores.npz (the test targets and every score of every test image but the fused ones, which
    read_scores rebuilds), then results.json, written last: its presence marks the trial finished;
    it records the sha256 of the trial's best.pt, where there is one.
    Scores are float16 (3 significant digits: enough for figures and ensembles; the metrics in
    results.json come from the full-precision scores), or float32 beyond float16's range."""
    arrays = {"targets": np.asarray(targets, dtype=np.uint8)}
    for name, values in test_scores.items():
        if name not in FUSIONS:
            values = np.asarray(values, dtype=np.float64)
            arrays[name] = values.astype(np.float16 if np.abs(values).max(initial=0) < 6e4 else np.float32)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(Path(folder) / "scores.npz", buffer.getvalue())
    weights = file_sha256(Path(folder) / "best.pt")  # the weights these results are of (score.py checks it)
    atomic_write_text(Path(folder) / "results.json", results_text({**results, **({"model_sha256": weights}
                                                                                  if weights else {})}))


def _number(value, low=-math.inf, high=math.inf):
    """A finite number (not a bool) in [low, high]."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value)) and low <= float(value) <= high
    except OverflowError:  # an integer beyond float's range
        return False


RESULTS_SCHEMA = {  # what every reader of a results.json needs: key -> (check, what it must be)
    "metrics": (lambda v: isinstance(v, dict) and v and all(
        isinstance(m, dict) and all(_number(m.get(k), 0, 1) for k in METRICS if k in m)
        and all(k in m for k in ("auroc", "auprc", "f1_oracle")) for m in v.values()),
        "each score's auroc, auprc and f1_oracle, numbers in [0, 1]"),
    "thresholds": (lambda v: isinstance(v, dict) and all(_number(t) for t in v.values()),
                   "each score's decision threshold, a finite number"),
    "threshold_percentile": (lambda v: _number(v, 0, 100), "a number in [0, 100]"),
    "validation_stats": (lambda v: isinstance(v, dict) and all(is_mean_and_spread(p) for p in v.values()),
               "each score's validation [mean, spread]: finite, the spread above 0, neither beyond 1e12"),
    "class": (lambda v: type(v) is int and v >= 0, "the class, an integer >= 0"),
    "seed": (lambda v: type(v) is int and v >= 0, "the seed, an integer >= 0"),
    "history": (lambda v: isinstance(v, dict), "the training history by columns"),
}


def read_results(folder):
    """A finished trial's results.json, checked once against RESULTS_SCHEMA (and every score of
    its metrics has a threshold); a damaged one is a UserError naming what is wrong and what to do."""
    path = Path(folder) / "results.json"
    what_to_do = (f"Delete it and run the trial again (python main.py --resume {Path(folder).parent}), "
                  f"or restore it from a copy.")
    results = read_json(path, what_to_do)
    if not isinstance(results, dict):
        raise UserError(f"{path} is not a trial's results (not a JSON object). {what_to_do}")
    wrong = [f"{key} ({rule})" for key, (check, rule) in RESULTS_SCHEMA.items()
             if key not in results or not check(results[key])]
    if not wrong and set(results["metrics"]) - set(results["thresholds"]):
        wrong = [f"thresholds (none for {', '.join(sorted(set(results['metrics']) - set(results['thresholds'])))})"]
    if wrong:
        legacy = " It may come from an earlier version: python scripts/migrate_runs.py FOLDER." if \
            "validation_stats" in " ".join(wrong) or "history" in " ".join(wrong) else ""
        raise UserError(f"{path} is not a trial's results: {'; '.join(wrong)} missing or malformed. "
                        f"{what_to_do}{legacy}")
    return results


def read_scores(folder, results=None):
    """(targets, {score: per-image test scores}) of a finished trial, from scores.npz, with the
    fused scores rebuilt from their members and results.json's statistics; checked: targets of 0
    and 1, every score one number per target, all 1-D."""
    folder = Path(folder)
    what_to_do = f"Run the trial again, or python main.py --eval-only {folder.parent} to score it again."
    if results is None and (folder / "results.json").exists():
        results = read_results(folder)
    counts = (results or {}).get("counts", {}).get("test") if isinstance((results or {}).get("counts"), dict) else None
    n_test = sum(counts) if isinstance(counts, list) and all(type(c) is int and c >= 0 for c in counts) else None
    try:
        if not os.path.lexists(folder / "scores.npz"):
            raise FileNotFoundError
        with open_archive(folder / "scores.npz", "a trial's test scores", what_to_do, expansion=64) as file:
            _check_npy_sizes(file, n_test)
            with np.load(file, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        targets = arrays.pop("targets")
        arrays = {name: values.astype(np.float64) for name, values in arrays.items()}
        if not (targets.ndim == 1 and np.isin(targets, (0, 1)).all()
                and all(values.shape == targets.shape for values in arrays.values())):
            raise ValueError("shapes or targets")
    except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile, EOFError) as error:
        raise UserError(f"{folder} holds no readable test scores (scores.npz missing, truncated, corrupt or of the "
                        f"wrong shape: {type(error).__name__}). {what_to_do}") from None
    stats = (results or read_results(folder))["validation_stats"]
    members = {name: values for name, values in arrays.items() if name not in FUSIONS}
    with np.errstate(over="ignore"):
        rebuilt = fusions({m: stats[m] for m in members if m in stats}, members)
    return targets.astype(np.int64), {**rebuilt, **arrays}


def _check_npy_sizes(file, n_test=None):
    """Every array of the .npz `file` no larger than its entry, and of n_test numbers (the trial's
    test images, where its results.json says), read from the headers: numpy allocates the shape a
    header declares before it reads the data, and every score becomes float64, so a forged header,
    or zeros that deflate a thousandfold, would take the machine's memory (ValueError otherwise;
    `file` is left at its start)."""
    with zipfile.ZipFile(file) as archive:
        for entry in archive.infolist():
            with archive.open(entry) as member:
                version = np.lib.format.read_magic(member)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(member)
                if math.prod(shape) * dtype.itemsize > entry.file_size or \
                        (n_test is not None and tuple(shape) != (n_test,)):
                    raise ValueError("an array larger than its entry, or not one number per test image")
    file.seek(0)


def score_name(results, score):
    """The score of a trial a table shows for SCORE `score`: that one ("best": the network's best,
    tool.scores.recommended), or the trial's only score (a classical detector has one), or None."""
    if score == "best":
        return recommended(list(results["metrics"]))
    if score in results["metrics"]:
        return score
    return next(iter(results["metrics"])) if len(results["metrics"]) == 1 else None


def load_results(run_dir):
    """{(class, seed): results dict} for every finished trial under `run_dir`."""
    found = {}
    for path in sorted(Path(run_dir).glob("class*_seed*/results.json")):
        result = read_results(path.parent)
        if path.parent.name != f"class{result['class']}_seed{result['seed']}":
            raise UserError(f"{path} holds the results of class {result['class']}, seed {result['seed']}, but its "
                            f"folder is named {path.parent.name}: a trial's folder is class<c>_seed<s>. Move a "
                            f"copy out of the run folder, or restore the trial from a copy.")
        found[(result["class"], result["seed"])] = result
    if found and (Path(run_dir) / "config.json").is_file():
        from tool.runs import check_run_trials

        check_run_trials(run_dir)
    return found
