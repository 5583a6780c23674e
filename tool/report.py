"""One table for many runs: every model of a dataset side by side, beside the published figures.

    python main.py --compare results/fmnist      # every run folder below, grouped by protocol

Writes comparison.md and comparison.csv into the folder given. Each run folder contributes the
mean over classes of each metric (mean ± std over its seeds) and its per-class AUROC; the tables
are built from the results.json files by key, and a cell without results shows as "-".
"""
import csv
import io
import json
from pathlib import Path

from tool import evaluation
from tool.errors import UserError
from tool.io import REPO, atomic_write_bytes, atomic_write_text
from tool.sweep import PLACEMENT_KEYS, class_names_of, planned_units, read_run_config, results_text

EXPORTED = ("config.json", "results.json", "table.md", "table.csv", "roc_all.png")
ROW_ORDER = ["cascade", "cascade-released", "cascade-mlp", "memae", "ae", "ae-mlp", "vae", "knn", "iforest", "ocsvm"]


def find_runs(root):
    """{(dataset, protocol): {row label: run folder}} for every run folder below `root`.

    A row is labelled by its model, plus, where one model was run with several settings (an
    ablation), the settings that tell its runs apart. Runs with identical settings: the newest.
    """
    configs = {}
    for path in sorted(Path(root).rglob("config.json")):  # sorted: timestamps in increasing order
        if not path.parent.name.startswith("class"):
            configs[path.parent] = json.loads(path.read_text())["config"]
    if not configs:
        raise UserError(f"no run folder (config.json beside class*_seed* folders) below {root}")
    groups = {}
    for run_dir, config in configs.items():
        groups.setdefault((config["dataset"], config["protocol"]), {}).setdefault(config["model"], []).append(run_dir)
    runs = {}
    for key, models in groups.items():
        runs[key] = {}
        for model, run_dirs in models.items():
            settings = [{k: v for k, v in configs[d].items() if k not in (*PLACEMENT_KEYS, "threads")}
                        for d in run_dirs]
            varying = [k for k in settings[0] if any(s.get(k) != settings[0].get(k) for s in settings)]
            for run_dir, setting in zip(run_dirs, settings):
                label = model + "".join(f" {k}={_text(setting.get(k))}" for k in varying)
                runs[key][label] = run_dir
    return runs


def _text(value):
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _order(label):
    model = label.split(" ")[0]
    return (ROW_ORDER.index(model) if model in ROW_ORDER else len(ROW_ORDER), label)


def compare(root):
    """Print and write the comparison tables of every run below `root`; return the Markdown."""
    root = Path(root)
    runs = find_runs(root)
    markdown, rows_csv = [], []
    for (dataset, protocol), labelled in sorted(runs.items()):
        models = sorted(labelled, key=_order)
        summary_rows, per_class, class_names = [], {}, {}
        for model in models:
            run_dir = labelled[model]
            config = json.loads((run_dir / "config.json").read_text())["config"]
            results = evaluation.load_results(run_dir)
            class_names.update({c: r["class_name"] for (c, _), r in results.items()})
            names = class_names_of(config)
            classes, seeds = planned_units(run_dir, config, len(names) if names else None)
            summary = evaluation.summarise(results, classes, seeds)
            cells = [evaluation.format_cell(summary["mean"][m], 2, True) for m in evaluation.METRICS]
            finished = len(results)
            complete = summary["mean"]["auroc"][2] if summary["mean"]["auroc"] else 0  # seeds in the mean
            seeds_text = f"{complete}" if complete == len(seeds) else f"{complete} of {len(seeds)}"
            summary_rows.append([model, *cells, f"{seeds_text} ({finished}/{len(classes) * len(seeds)} units)",
                                 str(run_dir.relative_to(root))])
            per_class[model] = {c: summary[c]["auroc"] for c in classes}
            rows_csv += [[dataset, protocol, model, m, *(f"{v:.6f}" for v in summary["mean"][m][:2])]
                         for m in evaluation.METRICS if summary["mean"][m]]
        header = ["model (settings that differ)", *evaluation.METRICS.values(), "seeds", "run"]
        published = [row[:-1] + ["-", "PAPER.md"] for row in evaluation.published_rows(dataset)] \
            if protocol == "one-anomalous-class" else []
        title = f"{dataset}, {protocol}: mean over classes, in %, mean ± std over seeds"
        print(title)
        print(evaluation.render_table(header, summary_rows, published))
        markdown += [f"## {title}", "", evaluation.to_markdown(header, summary_rows + published)]
        classes = sorted({c for cells in per_class.values() for c in cells})
        class_header = ["class", *models]
        class_rows = [[f"{c} {class_names.get(c, '')}".strip(),
                       *(evaluation.format_cell(per_class[m].get(c), 2, True) for m in models)] for c in classes]
        markdown += [f"AUROC per class ({dataset}, {protocol}), in %:", "",
                     evaluation.to_markdown(class_header, class_rows)]
    text = "\n".join(markdown)
    atomic_write_text(root / "comparison.md", text)
    buffer = io.StringIO()
    csv.writer(buffer).writerows([["dataset", "protocol", "model", "metric", "mean", "std"], *rows_csv])
    atomic_write_text(root / "comparison.csv", buffer.getvalue())
    print(f"written: {root / 'comparison.md'}, {root / 'comparison.csv'}")
    return text


def export(run_dir, dest=None):
    """Copy a run's results, without checkpoints, logs or per-unit figures, to
    results/<dataset>/<model>/<timestamp>/ (or below `dest`): what a table is built from."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    target = Path(dest or REPO / "results") / config["dataset"] / config["model"] / run_dir.name
    if target.exists():
        raise UserError(f"{target} exists; an export never overwrites one.")
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)  # the run's own files, and its units' (class*_seed*/...)
        if not path.is_file() or relative.name not in EXPORTED or len(relative.parts) > 2:
            continue
        if relative.name == "results.json":  # rewritten in the compact layout of tool.sweep.results_text
            atomic_write_text(target / relative, results_text(json.loads(path.read_text())))
        else:
            atomic_write_bytes(target / relative, path.read_bytes())
    print(f"exported: {target}")
    return target
