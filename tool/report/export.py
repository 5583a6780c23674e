"""Export: what a run's tables are built from, without checkpoints, logs or figures,
into results/ (python main.py --export RUN_DIR)."""
import os
import shutil
from pathlib import Path

from tool.errors import UserError
from tool.io import REPO, WriteError, atomic_write_bytes, make_dir, read_own_file, write_reason
from tool.locks import staging_dir
from tool.results import load_results, read_scores
from tool.runs import read_run_config

EXPORTED = ("config.json", "results.json", "scores.npz", "table.md", "table.csv", "leakage.json")  # no figures:
# a run's ROC curves are drawn beside it in runs/, the per-class figure of results/ by --compare


def export(run_dir, dest=None):
    """Copy a run's results to results/<dataset>/<model>/<timestamp>/ (or below `dest`); a run on
    a tuning split (a "-tune" dataset) to results/tuning/<dataset>/..., beside the others that chose
    the settings. Only finished trials are copied (a run still training can be exported as far as it
    got); a trial without its scores.npz (a run resumed from such an export, whose scores.npz were
    left out of results/) is copied without it, and one that has it must have it readable. The copy
    is made in a hidden folder beside the target (staging_dir) and renamed into place when complete,
    so a failed export leaves nothing behind, and a killed one's folder is removed by the next
    export. A run folder holding a symbolic link is refused: its target could be any file."""
    run_dir = Path(run_dir).resolve()  # "--export ." names the run by its folder's own name
    config = read_run_config(run_dir)
    tuning = ("tuning",) if config["dataset"].endswith("-tune") else ()
    target = Path(dest or REPO / "results").joinpath(*tuning, config["dataset"], config["model"], run_dir.name)
    if target.exists():
        raise UserError(f"{target} exists; an export never overwrites one.")
    linked = [p for p in run_dir.rglob("*") if p.is_symlink()]
    if linked:  # an export copies the run's own files: never what a link points to (a secret), nor skips a trial
        raise UserError(f"{linked[0]} is a symbolic link: an export copies a run's own files only. Replace the link "
                        f"by the file or folder itself, or remove it.")
    for results in load_results(run_dir).values():  # every results.json and scores.npz must be readable before
        trial = run_dir / f"class{results['class']}_seed{results['seed']}"  # anything is written; a trial
        if os.path.lexists(trial / "scores.npz"):  # without one (an export resumed: results/ keeps few) goes
            read_scores(trial, results)  # without it
    make_dir(target.parent)
    staging = None
    try:
        staging = staging_dir(target.parent, target.name)
        for path in sorted(run_dir.rglob("*")):
            relative = path.relative_to(run_dir)  # the run's own files, and its trials' (class*_seed*/...)
            if not path.is_file() or relative.name not in EXPORTED or len(relative.parts) > 2:
                continue
            if len(relative.parts) == 2 and not (path.parent / "results.json").is_file():
                continue  # a trial still running or interrupted: exported once it finishes
            atomic_write_bytes(staging / relative, read_own_file(run_dir, relative, "Export the run again."))
        staging.rename(target)
    except (WriteError, OSError) as error:
        reason, fix = (error.reason, error.fix) if isinstance(error, WriteError) else write_reason(error)
        raise UserError(f"cannot export to {target} ({reason}): {fix}; nothing was written there.") from None
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    print(f"exported: {target}")
    return target
