"""Every table: one run's per-class table, and every run of a dataset side by side beside the
published figures.

    python main.py --table RUN_DIR         # the per-class table of one run (mean ± std over seeds)
    python main.py --compare results/fmnist      # every run folder below, grouped by protocol

Tables are built from the trials' results.json files by key; a cell without results shows as "-".
"""
import csv
import io
import shutil
import textwrap
from pathlib import Path

import numpy as np
from prettytable import PrettyTable

from tool.data.datasets import class_label
from tool.report.ensemble import ensemble_summary
from tool.errors import UserError
from tool.evaluation import METRICS
from tool.scores import FUSIONS, SCORES, recommended
from tool.io import atomic_write_text
from tool.report.leakage import read_leakage
from tool.results import load_results, score_name
from tool.runs import PLACEMENT_KEYS, TRIAL_NAME, class_names_of, is_run_config, planned_trials, read_run_config

# Published mean AUROC / AUPRC / best F1 in %, one anomalous class, from the authors' public
# rebuttal of an earlier version of the method (WWW 2024); see docs/method.md.
PUBLISHED = {
    "mnist": {"VAE (published)": {"auroc": 85.12, "auprc": 53.45, "f1_oracle": 54.67},
              "Cascade memory, untuned (published)": {"auroc": 88.45, "auprc": 59.17, "f1_oracle": 60.44}},
    "fmnist": {"VAE (published)": {"auroc": 70.61, "auprc": 22.90, "f1_oracle": 31.97},
               "Cascade memory, untuned (published)": {"auroc": 71.22, "auprc": 24.21, "f1_oracle": 33.36},
               "Cascade memory, tuned (published)": {"auroc": 74.61, "auprc": 26.84, "f1_oracle": 35.91}},
    "kmnist": {"VAE (published)": {"auroc": 72.57, "auprc": 25.34, "f1_oracle": 32.37},
               "Cascade memory, untuned (published)": {"auroc": 76.44, "auprc": 29.48, "f1_oracle": 35.93}},
}
FIGURE_ROWS = 24  # --compare draws its per-class figure up to this many rows (--score all: each run's best)
ROW_ORDER = ["cascade", "cascade-released", "cascade-mlp", "memae", "ae", "ae-mlp", "vae", "knn", "iforest", "ocsvm"]


# ---------------------------------------------------------------------------------------------
# Cells: mean ± std over seeds (np.std: the population's; with 3 seeds the sample std is 1.22 times it)
# ---------------------------------------------------------------------------------------------
def _mean_std(values):
    if not values:
        return None
    return float(np.mean(values)), float(np.std(values)) if len(values) > 1 else 0.0


def summarise(results, classes, seeds, score):
    """Per class and overall: {metric: (mean, std, n)} of SCORE `score` from {(class, seed):
    results} (a trial without that score counts as missing, unless it has only one: a classical
    detector's).

    A class's cell is the mean +- std over its finished seeds. The "mean" row is, per seed, the
    mean over classes (only seeds with every class finished), then mean +- std over those seeds.
    """
    found = {key: r["metrics"][name] for key, r in results.items() if (name := score_name(r, score))}
    rows = {}
    for c in classes:
        cell = {}
        for metric in METRICS:
            values = [found[(c, s)][metric] for s in seeds if (c, s) in found]
            cell[metric] = _mean_std(values) + (len(values),) if values else None
        rows[c] = cell
    complete = [s for s in seeds if all((c, s) in found for c in classes)]
    rows["mean"] = {metric: (_mean_std([np.mean([found[(c, s)][metric] for c in classes])
                                        for s in complete]) + (len(complete),)) if complete else None
                    for metric in METRICS}
    return rows


def format_cell(cell, decimals=2, percent=True):
    """'mean ± std' (the ± part only for more than one seed) of a summarise() cell; '-' for none."""
    if cell is None:
        return "-"
    mean, std, n = cell
    scale = 100.0 if percent else 1.0
    text = f"{mean * scale:.{decimals}f}"
    return text + (f" ± {std * scale:.{decimals}f}" if n > 1 else "")


def published_rows(dataset):
    return [[name, *(f"{v[m]:.2f}" if m in v else "-" for m in METRICS), "-"]
            for name, v in PUBLISHED.get(dataset, {}).items()]


# ---------------------------------------------------------------------------------------------
# Rendering: the terminal (PrettyTable), Markdown, CSV
# ---------------------------------------------------------------------------------------------
def render_table(header, rows, extra_rows=()):
    """The table for the terminal: its first column (the long row labels of --compare) wrapped
    between words so that the table fits the terminal's width, where it can."""
    others = sum(max(len(str(row[i])) for row in [header, *rows, *extra_rows]) + 3 for i in range(1, len(header)))
    width = max(24, shutil.get_terminal_size().columns - 1 - others - 4)
    wrap = lambda row: [textwrap.fill(str(row[0]), width, break_on_hyphens=False), *row[1:]]  # noqa: E731
    rows, extra_rows = [wrap(row) for row in rows], [wrap(row) for row in extra_rows]
    table = PrettyTable(header, align="r")
    table.align[header[0]] = "l"
    for i, row in enumerate(rows):
        table.add_row(row, divider=bool(extra_rows) and i == len(rows) - 1)
    for row in extra_rows:
        table.add_row(row)
    return table


def to_markdown(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def as_text_cell(text):
    """A name as a CSV cell a spreadsheet shows as text: one that starts as a formula would (=, +,
    -, @, a tab or a carriage return: a folder class named '=cmd|calc') gets a leading apostrophe
    (OWASP's advice against CSV injection)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csv_text(rows):
    """CSV of `rows`; the names in them (strings that are not numbers) written as text cells."""
    def cell(value):
        try:
            float(value) if isinstance(value, str) else None
            return value
        except ValueError:
            return as_text_cell(value)

    buffer = io.StringIO()
    csv.writer(buffer).writerows([cell(v) for v in row] for row in rows)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# One run: a row per class, then the mean
# ---------------------------------------------------------------------------------------------
def table_rows(results, classes, class_names, seeds, decimals=2, score="recon"):
    """Header and rows (strings) of the per-class table: each metric as mean ± std over seeds."""
    summary = summarise(results, classes, seeds, score)
    rows = []
    for c in [*classes, "mean"]:
        n = max((cell[2] for cell in summary[c].values() if cell), default=0)
        name = "mean" if c == "mean" else class_label(c, class_names[c])
        rows.append([name, *(format_cell(summary[c][m], decimals) for m in METRICS), str(n)])
    return ["class", *METRICS.values(), "seeds"], rows


def table_csv(results, classes, class_names, seeds, score="recon"):
    """The per-class table for machines: mean and std of each metric (0..1), one line per class."""
    summary = summarise(results, classes, seeds, score)
    lines = [["class", "name", *(f"{m}_{s}" for m in METRICS for s in ("mean", "std")), "n_seeds"]]
    for c in [*classes, "mean"]:
        values = [text for m in METRICS
                  for text in ([f"{v:.6f}" for v in summary[c][m][:2]] if summary[c][m] else ["", ""])]
        n = max((cell[2] for cell in summary[c].values() if cell), default=0)
        lines.append([c, "" if c == "mean" else class_names[c], *values, n])
    return _csv_text(lines)


def run_table(run_dir, results=None, decimals=2, write=True, score=None):
    """Print the run's table of SCORE `score` (None: the run's own), built by key from its results;
    write table.md / table.csv beside it (and roc_all.png when the run draws figures). Returns
    (header, rows). SCORE "all": a table per score the trials hold, printed only."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    score = score or config.get("score", "recon")
    results = load_results(run_dir) if results is None else results
    if score == "all":
        names = dict.fromkeys(name for r in results.values() for name in r["metrics"])
        return [run_table(run_dir, results, decimals, False, name) for name in names or [config.get("score", "recon")]]
    class_names = class_names_of(config)
    classes, seeds = planned_trials(run_dir, config, len(class_names) if class_names else None)
    # the dataset's names, and beyond them (a folder dataset prepared again with fewer classes) the trials' own
    recorded = {c: r.get("class_name", str(c)) for (c, _), r in results.items()}
    class_names = [*(class_names or []), *(str(recorded.get(c, c)) for c in range(len(class_names or []),
                                                                             max(classes, default=-1) + 1))]
    header, rows = table_rows(results, classes, class_names, seeds, decimals, score)
    every_class = classes == list(range(len(class_names)))  # the published figures are means over every class
    published = published_rows(config["dataset"]) if config["protocol"] == "one-anomalous-class" and every_class else []
    shown = {score_name(r, score) for r in results.values()} - {None}
    title = (f"{config['dataset']} / {config['model']} / {config['protocol']}, score {', '.join(sorted(shown)) or score}: "
             f"metrics in %, mean ± std over seeds {seeds}")
    if write:  # before printing: a folder that cannot take them is one error, not a table and a crash
        atomic_write_text(run_dir / "table.md", f"{title}\n\n" + to_markdown(header, rows + published))
        atomic_write_text(run_dir / "table.csv", table_csv(results, classes, class_names, seeds, score))
    print(title)
    print(render_table(header, rows, published))
    if write:
        if config.get("draw_figures", True):
            from tool.report import figures

            figures.draw_run(run_dir, results, class_names, title.split(": metrics in %")[0], score)
    return header, rows


# ---------------------------------------------------------------------------------------------
# Every run of a dataset
# ---------------------------------------------------------------------------------------------
def find_runs(root):
    """{(dataset, protocol): {row label: run folder}} for every run folder below `root`.

    A row is labelled by its model, plus, where one model was run with several settings (an
    ablation), the settings that tell its runs apart. Runs with identical settings: the newest.
    """
    configs = {}
    root = Path(root)
    for path in sorted(root.rglob("config.json")):  # sorted: timestamps in increasing order
        relative = path.parent.relative_to(root).parts
        if any(part.startswith(".") for part in relative) or TRIAL_NAME.fullmatch(path.parent.name):
            continue  # a hidden folder (an export's staging folder, .vscode/) or a trial of a run
        if is_run_config(path):
            configs[path.parent] = read_run_config(path.parent)
    if not configs:
        raise UserError(f"no run folder (config.json beside class*_seed* folders) below {root}")
    groups = {}
    for run_dir, config in configs.items():
        if not all(isinstance(config.get(k), str) for k in ("dataset", "protocol", "model")):
            raise UserError(f"{run_dir / 'config.json'} names no dataset, protocol and model. Restore it from "
                            f"a copy, or move the folder out of {root}.")
        groups.setdefault((config["dataset"], config["protocol"]), {}).setdefault(config["model"], []).append(run_dir)
    runs = {}
    for key, models in groups.items():
        runs[key] = {}
        for model, run_dirs in models.items():
            settings = [{k: v for k, v in configs[d].items() if k not in (*PLACEMENT_KEYS, "threads")}
                        for d in run_dirs]
            keys = dict.fromkeys(k for s in settings for k in s)
            varying = [k for k in keys if any(s.get(k) != settings[0].get(k) for s in settings)]
            for run_dir, setting in zip(run_dirs, settings):
                label = model + "".join(f" {k}={_text(setting.get(k))}" for k in varying)
                runs[key][label] = run_dir
    return runs


def _text(value):
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _score_order(name):
    order = [*SCORES, *FUSIONS]
    return (order.index(name) if name in order else len(order), name)


def _order(label):
    model = label.split(" ")[0]
    return (ROW_ORDER.index(model) if model in ROW_ORDER else len(ROW_ORDER), label)


def compare(root, score="recon", ensemble=False):
    """Print and write comparison.md / comparison.csv of every run below `root`, of SCORE `score`
    ("all": a row per score of every run), with `ensemble` a row more after each network row of
    several seeds: their seed ensemble (tool/report/ensemble.py); return the Markdown."""
    root = Path(root)
    runs = find_runs(root)
    markdown, rows_csv, pictures = [], [["dataset", "protocol", "model", "score", "metric", "mean", "std"]], []
    for (dataset, protocol), labelled in sorted(runs.items()):
        loaded = {label: load_results(run_dir) for label, run_dir in labelled.items()}
        rows, loaded_names, missing = [], {}, []  # (row label, run label, score); each run's scores; runs without `score`
        for label in sorted(labelled, key=_order):
            names = loaded_names[label] = sorted({n for r in loaded[label].values() for n in r["metrics"]},
                                                 key=_score_order)
            if score in ("all", "best"):
                shown = names if score == "all" else [recommended(names)] * bool(names)
                rows += [(f"{label} [{name}]", label, name) for name in shown]
            else:
                shown = [n for n in names if n == score] or names[:1] * (len(names) == 1)
                rows += [(label, label, name) for name in shown]
                missing += [label] * (not shown)
        models, summary_rows, per_class, class_names, pictured = [], [], {}, {}, []
        for model, label, name in rows:
            run_dir, results = labelled[label], loaded[label]
            config = read_run_config(run_dir)
            class_names.update({c: r.get("class_name", "") for (c, _), r in results.items()})
            names = class_names_of(config)
            classes, seeds = planned_trials(run_dir, config, len(names) if names else None)
            summary = summarise(results, classes, seeds, name)
            if names and classes != list(range(len(names))):  # a mean over other classes than the published ones
                model = f"{model} (classes {' '.join(map(str, classes))} only)"
            cells = [format_cell(summary["mean"][m]) for m in METRICS]
            complete = summary["mean"]["auroc"][2] if summary["mean"]["auroc"] else 0  # seeds in the mean
            seeds_text = f"{complete}" if complete == len(seeds) else f"{complete} of {len(seeds)}"
            summary_rows.append([model, *cells, f"{seeds_text} ({len(results)}/{len(classes) * len(seeds)} trials)",
                                 str(run_dir.relative_to(root))])
            models.append(model)
            per_class[model] = {c: summary[c]["auroc"] for c in classes}
            if score != "all" or name == recommended(loaded_names[label]):  # the figure: each run's best score
                pictured.append(model)
            rows_csv += [[dataset, protocol, label, name, m, *(f"{v:.6f}" for v in summary["mean"][m][:2])]
                         for m in METRICS if summary["mean"][m]]
            together = ensemble_summary(run_dir, results, classes, seeds, name) if ensemble else None
            if together:
                members = " ".join(map(str, together["seeds"]))
                model = f"{model}, ensemble of seeds {members}"
                summary_rows.append([model, *(format_cell(together["mean"].get(m)) for m in METRICS),
                                     f"1 ({len(together['seeds'])} seeds averaged)", str(run_dir.relative_to(root))])
                models.append(model)
                per_class[model] = {c: together[c]["auroc"] for c in classes}
                rows_csv += [[dataset, protocol, f"{label} ensemble of seeds {members}", name, m,
                              f"{together['mean'][m][0]:.6f}", ""] for m in METRICS if m in together["mean"]]
        header = ["model (settings that differ)", *METRICS.values(), "seeds", "run"]
        published = [row[:-1] + ["-", "docs/method.md"] for row in published_rows(dataset)] \
            if protocol == "one-anomalous-class" else []
        title = (f"{dataset}, {protocol}: mean over classes, in %, mean ± std over seeds; score "
                 f"{'[in brackets]' if score in ('all', 'best') else score + ' (classical detectors: their own)'}"
                 f"{' (the best of each network)' if score == 'best' else ''}")
        left_out = (f"Left out, without the score {score}: {', '.join(missing)} "
                    f"(--score all shows every score of every run)") if missing else ""
        print(title)
        print(render_table(header, summary_rows, published))
        markdown += [f"## {title}", "", to_markdown(header, summary_rows + published)]
        if left_out:
            print(left_out)
            markdown += ["", left_out]
        classes = sorted({c for cells in per_class.values() for c in cells})
        class_rows = [[class_label(c, class_names.get(c, "")), *(format_cell(per_class[m].get(c)) for m in models)]
                      for c in classes]
        leaky = [(label, read_leakage(labelled[label])) for label in sorted(labelled, key=_order)
                 if (labelled[label] / "leakage.json").is_file()]  # in pixels the same for every run: the first's
        leak_header = ["leakage, pixels", *(f"leakage, latent of {label}" for label, _ in leaky)] if leaky else []
        if leaky:
            cells = [(leaky[0][1], "pixels")] + [(leakage, "latent") for _, leakage in leaky]
            class_rows = [row + [f"{leakage[c][key]:.2f}" if key in leakage.get(c, {}) else "-" for leakage, key in cells]
                          for c, row in zip(classes, class_rows)]
        if pictured and len(pictured) <= FIGURE_ROWS:  # comparison-<dataset>.png, once the tables are written
            pictures.append(({m: per_class[m] for m in pictured}, class_names,
                             f"{dataset}, {protocol}" + (", each run's best score" if score == "all" else ""),
                             root / (f"comparison-{dataset}.png" if protocol == "one-anomalous-class"
                                     else f"comparison-{dataset}@{protocol}.png")))  # "@": never in a dataset name
        markdown += [f"AUROC per class ({dataset}, {protocol}), in %"
                     + ("; neighbourhood class leakage beside it (1: the class mixes with the others as if at random, "
                        "0: not at all; python main.py --leakage RUN_DIR, tool/report/leakage.py)" if leaky else "") + ":", "",
                     to_markdown(["class", *models, *leak_header], class_rows)]
    text = "\n".join(markdown)
    atomic_write_text(root / "comparison.md", text)
    atomic_write_text(root / "comparison.csv", _csv_text(rows_csv))
    from tool.report import figures

    for picture in pictures:  # every row's AUROC per class against the pixel kNN
        figures.comparison_figure(*picture)
    print(f"written: {root / 'comparison.md'}, {root / 'comparison.csv'}" + "".join(f", {p[-1]}" for p in pictures))
    return text
