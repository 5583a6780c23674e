"""Bring run folders written by an earlier version of this code to today's file formats, once.

    python scripts/migrate_runs.py results        # what this repository did to its own results/
    python scripts/migrate_runs.py runs           # your own runs, if main.py says they need it

The readers of today's code read today's formats only; this script is where every older format
is turned into it (settings renamed, settings added since, the training history by columns and
to today's significant digits, the one-score results of the first versions). Each file is rewritten atomically and only if it changes;
the script says how many it changed, and running it again changes nothing.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tool.errors import UserError, cli  # noqa: E402
from tool.io import atomic_write_json, atomic_write_text, read_json  # noqa: E402
from tool.results import history_columns, results_text  # noqa: E402
from tool.flags import OneLineParser  # noqa: E402

RENAMED = {"threshold": "addressing_threshold"}  # settings renamed since: old name -> today's
ADDED = {  # settings added since, with the value every run made before them had
    "patience_steps": 0, "min_steps": 0, "precision": "fp32", "compile": False,
    "ssl": None, "ssl_weight": 1.0, "ssl_temperature": 0.5, "ssl_in_validation": True, "ssl_augment": False,
}
DROPPED = ("classical",)  # not a setting: main.py's constants once picked up an imported table by mistake
CLASSICAL = ("knn", "iforest", "ocsvm")


def migrate_settings(config):
    """A run's or trial's settings in today's names, with every setting added since."""
    config = {RENAMED.get(key, key): value for key, value in config.items() if key not in DROPPED}
    return {**config, **{key: value for key, value in ADDED.items() if key not in config}}


def migrate_results(results):
    """A trial's results.json in today's layout: metrics and thresholds per score, the history by
    columns, the validation statistics (once named "fusion"; none recorded: {})."""
    results = dict(results)
    if "auroc" in results.get("metrics", {}):  # the first versions: one score, recon (or the detector's own)
        name = results.get("model") if results.get("model") in CLASSICAL else "recon"
        results["metrics"] = {name: results["metrics"]}
        threshold = results.pop("threshold", None) or {}
        results["thresholds"] = {name: threshold.get("value")}
        results["threshold_percentile"] = threshold.get("percentile_of_validation_scores")
        results.pop("scores", None), results.pop("targets", None)
    if isinstance(results.get("history"), list):
        results["history"] = history_columns(results["history"])
    results.setdefault("history", {})
    results["validation_stats"] = results.pop("fusion", results.get("validation_stats", {}))  # renamed: it standardises
    return results                                                                        # ensembles too


def migrate(root):
    """Migrate every config.json and results.json below `root`; returns how many files changed."""
    changed = 0
    for path in sorted(Path(root).rglob("*.json")):
        if path.name not in ("config.json", "results.json") or any(
                p.startswith(".") for p in path.relative_to(root).parts):
            continue  # a hidden folder below the root (an export's staging folder, .vscode/)
        saved = read_json(path, "Restore it from a copy.")
        if path.name == "config.json" and isinstance(saved, dict) and isinstance(saved.get("config"), dict):
            new = {**saved, "config": migrate_settings(saved["config"])}
            if new != saved:
                atomic_write_json(path, new)
                changed += 1
        elif path.name == "results.json" and isinstance(saved, dict) and "metrics" in saved:
            try:
                new = migrate_results(saved)
            except (TypeError, AttributeError, ValueError, KeyError) as error:
                raise UserError(f"{path} is not a trial's results.json in any layout this code wrote "
                                f"({type(error).__name__}); restore it from a copy or move it away. The files "
                                f"before it are migrated; run the script again afterwards.") from None
            text = results_text(new)  # today's layout, the history to today's digits
            if text != path.read_text(encoding="utf-8"):
                atomic_write_text(path, text)
                changed += 1
    return changed


def run(argv=None):
    parser = OneLineParser(prog="scripts/migrate_runs.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", metavar="FOLDER", help="folders of run folders")
    args = parser.parse_args(argv)
    for root in args.roots:
        if not Path(root).is_dir():
            raise UserError(f"{root} is not a folder.")
        print(f"{root}: {migrate(root)} file(s) migrated")


if __name__ == "__main__":
    cli(run)(sys.argv[1:])
