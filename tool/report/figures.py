"""Figures written beside every run: ROC curves, score histograms, reconstructions, slot usage.

    <run>/roc_all.png                     one ROC curve per class, each from the class's first seed
                                          (the lowest finished one), its AUROC in the legend
    <run>/class<c>_seed<s>/roc.png        the trial's ROC curve on the test split
    <run>/class<c>_seed<s>/scores.png     histograms of the test scores, normal against anomalous
                                          (densities), the validation threshold marked
    <run>/class<c>_seed<s>/reconstructions.png
                                          test inputs above their reconstructions: the most and least
                                          anomalous anomalies and normal images, with their scores
    <run>/class<c>_seed<s>/memory.png     memory models: how many normal validation images address
                                          each slot (weight > 0), slots sorted by use, one panel a stage

matplotlib is imported here only, lazily, and draws on Figure objects with the Agg canvas (no
pyplot, no change of the global backend). Figures are extras: draw_trial and draw_run run after
the results are written, and a failure to draw prints a warning instead of stopping a sweep.
"""
import io
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_curve
from tqdm import tqdm

from tool.data.datasets import class_label, load_dataset, scale_images
from tool.errors import UserError
from tool.evaluation import batches
from tool.io import atomic_write_bytes
from tool.data.protocol import make_split
from tool.results import load_results, read_scores, score_name
from tool.checkpoints import load_trial_model
from tool.runs import check_own_files, check_run_trials, read_run_config
from tool.scores import ABOUT_FUSIONS, SCORES
from tool.train import validation_pass

N_EXTREMES = 6  # images per group in reconstructions.png


def trial_view(folder, results, score):
    """What the figures read of a finished trial: one score's metrics, threshold and per-image
    test scores (SCORE `score`, or the trial's only score), with the test targets."""
    name = score_name(results, score)
    if name is None:
        raise UserError(f"{folder} has no score '{score}' (it has {', '.join(results['metrics'])}).")
    targets, scores = read_scores(folder)
    if name not in scores:
        raise UserError(f"{folder} has no {name} scores of its test images (scores.npz, or the validation statistics in "
                        f"results.json to rebuild them, missing or damaged); score it again: python main.py "
                        f"--eval-only {Path(folder).parent}")
    return {**results, "score": name, "metrics": results["metrics"][name], "scores": scores[name], "targets": targets,
            "threshold": {"value": results["thresholds"][name],
                          "percentile_of_validation_scores": results["threshold_percentile"]}}


def draw_trial(folder, results, score, split=None, model=None, strict=False):
    """roc.png and scores.png (of SCORE `score`) in a finished trial's folder; given its model and
    split, also reconstructions.png and (for a model with memory) memory.png. A failure is a
    warning, but with `strict` (--figures, where the figures are what was asked for) a folder that
    cannot be written is the command's one error."""
    try:
        device = next(model.parameters()).device if model is not None else "cpu"
        view = trial_view(folder, results, score)
        roc_figure(view, folder / "roc.png")
        scores_figure(view, folder / "scores.png")
        if model is not None and split is not None:
            reconstructions_figure(model, split.test, view, device, folder / "reconstructions.png")
            counts = [u["hits"].cpu().numpy().astype(np.int64)
                      for u in validation_pass(model, scale_images(split.val, device))[1]]
            if counts:
                memory_figure(counts, len(split.val), folder / "memory.png")
    except Exception as error:  # a figure is an extra: never lose a finished trial to it
        if strict and isinstance(error, UserError):
            raise
        _warn(f"figures of {folder} not drawn", error)


def draw_run(run_dir, results, class_names, title, score):
    """roc_all.png (of SCORE `score`) in the run folder from {(class, seed): results}. A failure is
    a warning."""
    if not results:
        return
    try:
        first = {}
        for c, s in sorted(results):  # each class's first (lowest) finished seed
            first.setdefault(c, (s, results[(c, s)]))
        views = {c: trial_view(Path(run_dir) / f"class{c}_seed{s}", trial, score) for c, (s, trial) in first.items()}
        roc_all_figure(views, class_names, title, run_dir / "roc_all.png")
    except Exception as error:  # a figure is an extra: never lose a table to it
        _warn(f"{run_dir / 'roc_all.png'} not drawn", error)


def _warn(what, error):
    tqdm.write(f"warning: {what} ({type(error).__name__}: {error})", file=sys.stderr)


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path):
    """PNG bytes rendered in memory, then written atomically (a temp file renamed into place)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())


def _trial_title(results):
    role = "anomalous" if results["protocol"] == "one-anomalous-class" else "normal"
    return (f"{results['dataset']} / {results['model']}: class {results['class']} ({results['class_name']}) "
            f"{role}, seed {results['seed']}")


# ---------------------------------------------------------------------------------------------
# ROC curves and score histograms (from results.json alone)
# ---------------------------------------------------------------------------------------------
def _roc_curve(ax, results, label):
    fpr, tpr, _ = roc_curve(results["targets"], results["scores"])  # target 1 = anomaly, higher = more anomalous
    ax.plot(fpr, tpr, label=f"{label}AUROC {100 * results['metrics']['auroc']:.1f}%")


def _roc_axes(ax, title):
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey", label="chance")
    ax.set(xlabel="false positive rate (normal images flagged)", ylabel="true positive rate (anomalies found)",
           xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
    ax.set_title(title, fontsize="small")
    ax.legend(loc="lower right", fontsize="small")


def roc_figure(results, path):
    figure = _figure(5, 5)
    ax = figure.add_subplot()
    _roc_curve(ax, results, "")
    _roc_axes(ax, _trial_title(results))
    _save(figure, path)


def roc_all_figure(views, class_names, title, path):
    """One curve per class (views: {class: trial_view of its first seed})."""
    figure = _figure(6.5, 6.5)
    ax = figure.add_subplot()
    for c, trial in views.items():
        _roc_curve(ax, trial, f"{class_label(c, class_names[c])} (seed {trial['seed']}): ")
    _roc_axes(ax, f"{title}\none curve per class, from its first seed")
    _save(figure, path)


def scores_figure(results, path):
    scores, targets = np.asarray(results["scores"]), np.asarray(results["targets"])
    threshold = results["threshold"]
    edges = np.histogram_bin_edges(scores, bins=int(np.clip(np.sqrt(len(scores)), 10, 50)))
    figure = _figure(7, 5)
    ax = figure.add_subplot()
    for target, name, colour in ((0, "normal", "tab:blue"), (1, "anomalous", "tab:red")):
        ax.hist(scores[targets == target], bins=edges, density=True, alpha=0.55, color=colour,
                label=f"{name} ({int((targets == target).sum())} test images)")
    ax.axvline(threshold["value"], ls="--", color="black",
               label=f"validation threshold {threshold['value']:.4g} "
                     f"({threshold['percentile_of_validation_scores']:g}th percentile of normal validation scores)")
    about = SCORES[results["score"]].about if results["score"] in SCORES else ABOUT_FUSIONS
    ax.set(xlabel=textwrap.fill(f"anomaly score: {results['score']} ({about})", 80), ylabel="density")
    ax.set_title(_trial_title(results), fontsize="small")
    figure.legend(loc="outside lower center", fontsize="small", ncols=1)  # below the axes: never over the bars
    _save(figure, path)


# ---------------------------------------------------------------------------------------------
# Reconstructions and memory slot usage (need the model)
# ---------------------------------------------------------------------------------------------
def _extremes(scores, targets, n):
    """{group title: test indices}: the n most and the n least anomalous anomalies and normals."""
    order = np.argsort(scores, kind="stable")  # ascending score
    groups = {}
    for target, kind in ((1, "anomalies"), (0, "normal images")):
        members = order[targets[order] == target]
        if len(members):
            groups[f"most anomalous {kind}"] = members[::-1][:n].copy()  # copy: torch takes no negative strides
            groups[f"least anomalous {kind}"] = members[:n]
    return groups


def _grid(images, gap=1):
    """(rows, cols, C, H, W) in [0, 1] -> one (H', W', C) picture, white lines between images."""
    rows, cols, c, h, w = images.shape
    grid = np.ones((rows * (h + gap) - gap, cols * (w + gap) - gap, c))
    for r in range(rows):
        for k in range(cols):
            grid[r * (h + gap): r * (h + gap) + h, k * (w + gap): k * (w + gap) + w] = images[r, k].transpose(1, 2, 0)
    return grid


def reconstructions_figure(model, test_images, results, device, path, n=N_EXTREMES):
    """Per group, the inputs (top row) above their reconstructions, pixels mapped back to [0, 1]."""
    scores, targets = np.asarray(results["scores"]), np.asarray(results["targets"])
    groups = _extremes(scores, targets, n)
    figure = _figure(1.5 + 1.1 * n, 2.4 * len(groups))
    axes = figure.subplots(len(groups), 1, squeeze=False)[:, 0]
    for ax, (title, idx) in zip(axes, groups.items()):
        x = scale_images(test_images[torch.from_numpy(idx)], device)
        pair = torch.stack([x, _reconstruct(model, x)]).add(1).div(2).clamp(0, 1).cpu().numpy()  # [-1, 1] -> [0, 1]
        _, _, c, h, w = pair.shape
        grid = _grid(pair)
        ax.imshow(grid[:, :, 0] if c == 1 else grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([k * (w + 1) + (w - 1) / 2 for k in range(len(idx))], [f"{scores[i]:.4g}" for i in idx],
                      fontsize="small")
        ax.set_yticks([(h - 1) / 2, h + 1 + (h - 1) / 2], ["input", "reconstruction"], fontsize="small")
        ax.tick_params(length=0)
        ax.set_title(f"{title} (anomaly scores below)", fontsize="small")
    figure.suptitle(_trial_title(results), fontsize="small")
    _save(figure, path)


@torch.inference_mode()
def _reconstruct(model, images):
    model.eval()
    return torch.cat([model(xb)["recon"] for xb in batches(images)])


def memory_figure(counts, n_images, path):
    from matplotlib.ticker import MaxNLocator

    figure = _figure(7, 0.5 + 2.2 * len(counts))
    axes = figure.subplots(len(counts), 1, squeeze=False)[:, 0]
    for stage, (ax, used) in enumerate(zip(axes, counts), 1):
        ax.stairs(np.sort(used)[::-1], fill=True)
        ax.set(xlim=(0, len(used)), xlabel="slots, sorted by use", ylabel="images")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # it counts images
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"stage {stage}: {len(used)} slots, {int((used > 0).sum())} addressed at least once",
                     fontsize="small")
    figure.suptitle(f"memory slot usage on the {n_images} normal validation images (weight > 0)", fontsize="small")
    _save(figure, path)


def comparison_figure(per_class, class_names, title, path):
    """Every row of a --compare table (per_class: {row label: {class: (mean, std, n)}}) as one line of
    cells, a cell a class, its AUROC written in it and coloured by how far it lies above (blue) or
    below (red) the pixel kNN's AUROC of that class (the row labelled knn), or by the AUROC itself
    when there is no such row. A failure is a warning."""
    try:
        labels = list(per_class)
        classes = sorted({c for cells in per_class.values() for c in cells})
        value = np.array([[100 * per_class[m][c][0] if per_class[m].get(c) else np.nan for c in classes]
                          for m in labels])
        value = np.column_stack([value, value.mean(axis=1)])  # and the mean over the classes (NaN: one missing)
        reference = next((i for i, m in enumerate(labels) if m.split(" ")[0] == "knn"), None)
        shade = value - value[reference] if reference is not None else value - np.nanmean(value)
        limit = max(1.0, float(np.nanmax(np.abs(shade))))
        figure = _figure(2.5 + 0.62 * len(classes) + 0.055 * max(len(m) for m in labels), 1.4 + 0.32 * len(labels))
        ax = figure.add_subplot()
        ax.imshow(shade, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        for i in range(len(labels)):
            for j in range(value.shape[1]):
                if np.isfinite(value[i, j]):
                    ax.text(j, i, f"{value[i, j]:.1f}", ha="center", va="center", fontsize="x-small",
                            color="white" if abs(shade[i, j]) > 0.6 * limit else "black")
        ax.axvline(len(classes) - 0.5, color="black", lw=1)
        ax.set_xticks(range(value.shape[1]), [*(class_label(c, class_names.get(c, "")) for c in classes), "mean"],
                      rotation=30, ha="right", fontsize="small")
        ax.set_yticks(range(len(labels)), labels, fontsize="x-small")
        against = "the pixel kNN of the same class" if reference is not None else "the mean of the column"
        ax.set_title(f"{title}: AUROC per class (%), blue above and red below {against}", fontsize="small")
        _save(figure, path)
    except Exception as error:  # a figure is an extra: never lose a table to it
        _warn(f"{path} not drawn", error)


def redraw(run_dir, device, score=None):
    """Draw every trial's figures again (python main.py --figures RUN_DIR) from its results and
    checkpoint, of SCORE `score` (None: the run's own)."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    check_own_files(run_dir)  # the figures are written into its trial folders
    score = score or config.get("score", "recon")
    results = load_results(run_dir)
    if not results:
        raise UserError(f"{run_dir} holds no finished trial (no class*_seed*/results.json).")
    ds = load_dataset(config["dataset"], config["data_dir"])
    check_run_trials(run_dir, ds)
    for (c, seed), trial_results in tqdm(sorted(results.items()), desc="drawing", unit="trial", leave=False,
                                         disable=None):
        folder = run_dir / f"class{c}_seed{seed}"
        split = make_split(ds, config["protocol"], c, config["val_fraction"], seed)
        model = load_trial_model(folder, device, (config["dataset"], ds.shape))[1] \
            if (folder / "best.pt").is_file() else None
        draw_trial(folder, trial_results, score, split, model, strict=True)
    return results
