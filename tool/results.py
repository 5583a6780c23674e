"""A trial's result files: results.json (every score's metrics and threshold, the training
history; written last, so its presence marks the trial finished) and scores.npz (every score of
every test image, float16, but the fused ones: read_scores rebuilds those from their members and the
validation statistics in results.json), written and read back checked."""
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from tool.classical import CLASSICAL
from tool.errors import UserError
from tool.evaluation import FUSIONS, METRICS, fusions
from tool.io import atomic_write_bytes, atomic_write_text, read_json


def results_text(results):
    """results.json: the small fields indented (the metrics to the last bit), the training history
    by columns, one quantity a line (history_columns), its floats to 5 significant digits. A
    500-epoch history takes 27 KB so, against 80 KB one epoch a line."""
    head = json.dumps({k: v for k, v in results.items() if k != "history"}, indent=2)
    if "history" not in results:
        return head + "\n"
    history = results["history"]
    columns = history_columns(history) if isinstance(history, list) else history
    if not isinstance(columns, dict):
        raise ValueError(f"a training history is a list of epochs or a dict of columns, not {type(history).__name__}")
    lines = ",\n".join(f"    {json.dumps(str(name))}: {json.dumps(_rounded(values), separators=(',', ':'))}"
                        for name, values in columns.items())
    return head[:-2] + (f',\n  "history": {{\n{lines}\n  }}\n}}\n' if lines else ',\n  "history": {}\n}\n')


def history_column(history, name):
    """One quantity of a training history, per epoch, from either layout: the columns of today's
    results.json or the list of epochs of one written before (and of TrainResult.history)."""
    if isinstance(history, dict):
        return list(history.get(name, []))
    return [epoch.get(name) for epoch in history if isinstance(epoch, dict)]


def history_columns(epochs):
    """The training history, one dict per epoch, as one list per quantity: {"epoch": [1, 2, ...],
    "val_loss": [...], "memory": [{"entropy": [...], ...} for each stage]}; a quantity an epoch
    lacks is null there. An empty history is {}."""
    if not epochs:
        return {}
    if not all(isinstance(epoch, dict) for epoch in epochs):
        raise ValueError("a training history's epochs are dicts")
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


def _rounded(value):
    """`value` with every float in it to 5 significant digits."""
    if isinstance(value, float):
        return float(f"{value:.5g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return [_rounded(v) for v in value] if isinstance(value, list) else value


def write_results(folder, results, targets, test_scores):
    """scores.npz (the test split's targets and every score of every test image but the fused
    ones), then results.json, written last: its presence marks the trial finished. Scores are
    stored as float16 (3 significant digits: enough for figures and ensembles; the metrics in
    results.json come from the full-precision scores), or float32 where a value is beyond float16's
    range. A fused score is a sum of its members standardised by results.json's "fusion"
    statistics, so read_scores rebuilds it; storing it would add a third to the file for nothing."""
    arrays = {"targets": np.asarray(targets, dtype=np.uint8)}
    for name, values in test_scores.items():
        if name in FUSIONS and _rebuildable(name, results.get("fusion"), test_scores):
            continue
        values = np.asarray(values, dtype=np.float64)
        arrays[name] = values.astype(np.float16 if np.abs(values).max(initial=0) < 6e4 else np.float32)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(Path(folder) / "scores.npz", buffer.getvalue())
    atomic_write_text(Path(folder) / "results.json", results_text(results))


def is_mean_and_spread(value):
    """[mean, spread] of finite floats, the spread above 0 (a results.json may be damaged or forged)."""
    if not (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        return False
    try:
        mean, spread = float(value[0]), float(value[1])
    except OverflowError:  # an integer beyond float's range
        return False
    return bool(np.isfinite(mean) and np.isfinite(spread) and spread > 0)


def _rebuildable(name, stats, scores):
    """Whether fused score `name` can be made again from `scores` ({score: values}) and the
    validation statistics `stats`: it can when every member the trial has comes with its [mean,
    spread] (what evaluation.fusions summed), and it has at least one member and the one it cannot be
    without."""
    members, needs = FUSIONS[name]
    present = [m for m in members if m in scores]
    if not isinstance(stats, dict) or not present or (needs is not None and needs not in scores):
        return False
    return all(is_mean_and_spread(stats.get(m)) for m in present)


def rebuilt_fusions(stats, scores):
    """{fused score: per-image values} of the fusions `scores` ({score: values}, the members of a
    scores.npz) and `stats` (results.json "fusion") allow, as evaluation.fusions makes them; none
    where a statistic is missing or damaged (the reader then reports the score missing)."""
    usable = {m: v for m, v in scores.items() if m not in FUSIONS}
    kept = {m: stats[m] for m in usable if is_mean_and_spread(stats.get(m))} if isinstance(stats, dict) else {}
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # a forged tiny spread: infinities,
        made = fusions(kept, usable)  # which every reader refuses as not finite
    return {name: values for name, values in made.items() if _rebuildable(name, stats, usable)}


def read_results(folder):
    """A finished trial's results.json, checked; a damaged one is a UserError saying what to do.
    "metrics" maps each score's name to its metrics, "thresholds" each score's to its threshold."""
    path = Path(folder) / "results.json"
    what_to_do = (f"Delete it and run the trial again (python main.py --resume {Path(folder).parent}), "
                  f"or restore it from a copy.")
    results = read_json(path, what_to_do)
    if isinstance(results, dict) and isinstance(results.get("metrics"), dict) and "auroc" in results["metrics"]:
        # written before trials computed several scores: its one score is recon (or the detector's)
        name = results.get("model") if results.get("model") in CLASSICAL else "recon"
        results["metrics"] = {name: results["metrics"]}
        threshold = results.pop("threshold", None)
        threshold = threshold if isinstance(threshold, dict) else {}
        results["thresholds"] = {name: threshold.get("value")}
        results["threshold_percentile"] = threshold.get("percentile_of_validation_scores")
        results.pop("scores", None), results.pop("targets", None)  # per-image lists: read_scores reads them
    if not (isinstance(results, dict) and isinstance(results.get("metrics"), dict) and results["metrics"]
            and all(isinstance(m, dict) and all(isinstance(m.get(k), (int, float)) for k in METRICS)
                    for m in results["metrics"].values())
            and isinstance(results.get("thresholds"), dict)
            and all(isinstance(results["thresholds"].get(name), (int, float, type(None)))
                    for name in results["metrics"])
            and isinstance(results.get("class"), int) and isinstance(results.get("seed"), int)
            and _is_history(results.get("history", [])) and isinstance(results.get("evaluations", []), list)):
        raise UserError(f"{path} is not a trial's results (metrics, thresholds, class, seed, history or evaluations "
                        f"missing or malformed). {what_to_do}")
    return results


def _is_history(history):
    """A training history in either layout: a list of epochs (dicts) or a dict of columns."""
    return isinstance(history, dict) or (isinstance(history, list) and all(isinstance(e, dict) for e in history))


def read_scores(folder):
    """(targets, {score: per-image test scores}) of a finished trial, from scores.npz (or, for a
    trial written before it existed, the lists in results.json), checked: targets of 0 and 1 and
    every score one finite-or-not number per target, all 1-D."""
    folder = Path(folder)
    what_to_do = f"Run the trial again, or python main.py --eval-only {folder.parent} to score it again."
    try:
        if not (folder / "scores.npz").is_file():
            legacy = read_json(folder / "results.json", what_to_do)
            if not (isinstance(legacy, dict) and isinstance(legacy.get("scores"), list)):
                raise UserError(f"{folder} has no scores.npz. {what_to_do}")
            name = read_results(folder)["metrics"].popitem()[0]
            targets, arrays = np.asarray(legacy.get("targets")), {name: np.asarray(legacy["scores"], dtype=np.float64)}
        else:
            with np.load(folder / "scores.npz", allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            targets = arrays.pop("targets")
        arrays = {name: values.astype(np.float64) for name, values in arrays.items()}
        if any(name not in arrays for name in FUSIONS) and (folder / "results.json").is_file():
            stats = read_results(folder).get("fusion")  # a trial written before the fusions were dropped keeps its own
            arrays = {**rebuilt_fusions(stats, arrays), **arrays}
        if not (targets.ndim == 1 and np.isin(targets, (0, 1)).all()
                and all(values.shape == targets.shape for values in arrays.values())):
            raise ValueError("shapes or targets")
        return targets.astype(np.int64), arrays
    except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile, EOFError) as error:
        raise UserError(f"{folder} holds no readable test scores (scores.npz truncated, corrupt or of the wrong "
                        f"shape: {type(error).__name__}). {what_to_do}") from None


def compact_scores(folder):
    """The bytes of `folder`'s scores.npz without the fused scores read_scores can rebuild (what
    --export copies, so a run trained before they were dropped is exported in today's form), the
    other arrays as they are; a damaged file is a UserError, as for read_scores."""
    read_scores(folder)  # checked first: a damaged file is one clear error
    with np.load(Path(folder) / "scores.npz", allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    members = {name: values for name, values in arrays.items() if name not in FUSIONS and name != "targets"}
    stats = read_results(folder).get("fusion")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{name: values for name, values in arrays.items()
                                   if not (name in FUSIONS and _rebuildable(name, stats, members))})
    return buffer.getvalue()


def score_name(results, score):
    """The score of a trial a table shows for SCORE `score`: that one, or the trial's only score
    (a classical detector has one), or None."""
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
    return found
