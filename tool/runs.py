"""Run folders: what a run writes, where, and how it is read back.

    runs/<dataset>/<preset>/<timestamp>/
        config.json                 the run's settings, environment, command history
        table.md, table.csv         the table, rebuilt from the trials' results.json by key
        class<c>_seed<s>/           one trial: class c as the anomaly (or the normal class), seed s
            config.json             full settings, seed, library versions, git commit
            scores.npz              every score of every test image (the fused ones are rebuilt
                                    from their members), and the test targets
            results.json            every score's metrics and threshold, epochs, times (written
                                    last: its presence marks the trial finished)
            best.pt                 the weights with the lowest validation loss
            bank.pt                 the normal training codes latent-knn compares with (and the
                                    hidden features hidden-knn compares with, MLP encoders)
            last.pt                 the checkpoint to resume from (epoch 1, then every CHECKPOINT_SECONDS;
                                    deleted once the trial finishes)
            tb/                     tensorboardX logs

Trials are independent: any subset can run anywhere (--classes C --seeds S --run-dir DIR), and a
folder's finished trials are skipped when it is run again. Processes sharing a folder take locks:
.config.lock around every read-modify-write of its config.json (the command history), and each
trial's .lock while it runs, so that a trial runs in one process at a time (tool.locks.file_lock).
"""
import json
import re
import shutil
import stat
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from tool.data.datasets import NAME_PATTERN
from tool.data.protocol import PROTOCOLS
from tool.errors import UserError
from tool.io import REPO, WriteError, atomic_write_json, make_dir, read_json, read_small_file, remove_temp_files, write_reason
from tool.locks import file_lock
from tool.provenance import environment

# Settings that do not change what a trial computes: they may differ between runs of one folder.
PLACEMENT_KEYS = ("classes", "seeds", "jobs", "device", "output_dir", "data_dir", "draw_figures", "score",
                  "checkpoint_seconds")
MIGRATE = "python scripts/migrate_runs.py"  # what brings a run folder of an earlier version to today's formats
MAX_CLASSES = 1000  # classes a run may plan (a run's config.json listing 100,000 took --compare a minute)

RUN_CONFIG_KEYS = {  # what every reader of a run's config.json needs: key -> (check, what it must be)
    "dataset": (lambda v: isinstance(v, str) and NAME_PATTERN.fullmatch(v) is not None, "a dataset name (a plain folder name)"),
    "model": (lambda v: isinstance(v, str) and NAME_PATTERN.fullmatch(v) is not None, "a preset name (a plain folder name)"),
    "protocol": (lambda v: v in PROTOCOLS, f"one of {', '.join(PROTOCOLS)}"),
    "classes": (lambda v: v is None or (isinstance(v, list) and len(v) <= MAX_CLASSES and len(set(v)) == len(v)
                                        and all(type(c) is int and 0 <= c < MAX_CLASSES for c in v)),
                f"null for every class, or a list of distinct class indexes below {MAX_CLASSES}"),
    "seeds": (lambda v: isinstance(v, list) and v != [] and all(type(s) is int for s in v), "a list of integer seeds"),
    "data_dir": (lambda v: v is None or isinstance(v, str), "a folder, or null for datasets/"),
}
CONFIG_LOCK = ".config.lock"  # held around every read-modify-write of a run folder's config.json
TRIAL_LOCK = ".lock"  # in a trial folder: held by the process running the trial


# ---------------------------------------------------------------------------------------------
# The run folder
# ---------------------------------------------------------------------------------------------
def new_run_dir(config):
    """A new folder OUTPUT_DIR/<dataset>/<model>/<timestamp> (relative OUTPUT_DIR: beside main.py)
    holding the run's config.json; when that cannot be written, the folder is removed again."""
    base = Path(config["output_dir"])
    base = base if base.is_absolute() else REPO / base
    parent = base / config["dataset"] / config["model"]
    created = [p for p in (parent, *parent.parents) if not p.exists()]  # removed again on a failure
    try:
        make_dir(parent)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        for i in range(1000):  # never reuse a folder: a second run in the same second gets a suffix
            path = parent / (stamp if i == 0 else f"{stamp}-{i}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            except OSError as error:
                raise WriteError(path, *write_reason(error)) from None
            try:
                write_run_config(path, config)
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)
                raise
            return path
        raise UserError(f"cannot create a new run folder under {parent}")
    except BaseException:  # no empty folder is left behind
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (another run), or not ours to remove
        raise


def is_run_config(path):
    """Whether the file `path` is a run's config.json ({"config": {...}, ...}) rather than some other
    tool's config.json that happens to lie in a tree of runs; a file that is not JSON at all is a
    damaged run config (read_run_config then says so)."""
    try:
        saved = json.loads(read_small_file(path, ""))
    except (UserError, ValueError, RecursionError):
        return True  # read_run_config then says what is wrong with it
    return isinstance(saved, dict) and "config" in saved


def read_run_config(run_dir):
    """The settings a run folder was made with (renamed settings under their new names)."""
    path = Path(run_dir) / "config.json"
    if TRIAL_NAME.fullmatch(Path(run_dir).name) and (Path(run_dir).parent / "config.json").is_file():
        raise UserError(f"{run_dir} is a trial folder; give its run folder, {Path(run_dir).parent}.")
    if not path.exists():  # one that is there but not a regular file: read_json says so
        raise UserError(f"{run_dir} is not a run folder (no config.json). Give a folder that main.py made, "
                        f"e.g. runs/<dataset>/<model>/<timestamp>.")
    what_to_do = "Restore it from a copy, or run again in a new folder."
    config = read_json(path, what_to_do)
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise UserError(f"{path} holds no run settings. {what_to_do}")
    config = config["config"]
    wrong = [f"{key} ({rule})" for key, (check, rule) in RUN_CONFIG_KEYS.items()
             if key not in config or not check(config[key])]
    if wrong:
        raise UserError(f"{path} is damaged: its settings lack or garble {'; '.join(wrong)}. {what_to_do}")
    return config


def write_run_config(run_dir, config):
    """The run's config.json; a later run of the same folder (--resume, --run-dir) adds its
    command, time and environment to the history instead of replacing the first one's. The
    read-modify-write holds the folder's config lock: processes starting together each add theirs."""
    with file_lock(Path(run_dir) / CONFIG_LOCK):
        _write_run_config(run_dir, config)


def _write_run_config(run_dir, config):
    path = Path(run_dir) / "config.json"
    saved = read_json(path, "Restore it from a copy, or run again in a new folder.") if path.is_file() else {}
    history = saved.get("history", []) if isinstance(saved, dict) else []
    entry = {"command": " ".join(sys.argv), "written": datetime.now().isoformat(), "environment": environment()}
    atomic_write_json(path, {"config": config, **entry, "history": [*history, entry]})


def open_run_dir(run_dir, config):
    """Use `run_dir` for this sweep: create it, or check that its settings match this config. Its
    config.json then plans the classes and seeds of both (the table shows them all)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file, not a folder: give a new or empty folder, or a run folder.")
    # listed first, hidden names left out: array tasks starting together may find another task's
    # config.json, or its temp or lock file, appearing in a folder they saw empty
    entries = [e for e in run_dir.iterdir() if not e.name.startswith(".")] if run_dir.is_dir() else []
    if entries and not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir} exists and is not a run folder; give an empty or new folder.")
    check_own_files(run_dir)
    if (run_dir / "config.json").is_file():
        _check_same_settings(run_dir, config)  # before any lock is taken: a refusal leaves no file behind
    make_dir(run_dir)
    with file_lock(run_dir / CONFIG_LOCK):  # another process may be checking and writing it just now
        if (run_dir / "config.json").is_file():
            saved = _check_same_settings(run_dir, config)
            config = {**config, **{k: _union(saved.get(k), config[k]) for k in ("classes", "seeds")}}
        _write_run_config(run_dir, config)
    return run_dir


def check_own_files(folder, itself=False):
    """Refuse (a UserError) a run or trial folder that holds a symbolic link, or a device node, FIFO
    or socket, in itself or (a run folder) in its trial folders: every command that writes into a
    run folder writes its own files there, never through a link (it would replace the file the
    link points to) and never into a FIFO (it would block). Checked before anything is written;
    `itself`: a trial folder, which must not be a link either (a run folder's own path may hold one)."""
    folder = Path(folder)
    entries = [folder] if itself and folder.is_symlink() else []
    entries += [e for e in folder.iterdir()] if folder.is_dir() and not folder.is_symlink() else []
    entries += [e for t in entries if TRIAL_NAME.fullmatch(t.name) and t.is_dir() and not t.is_symlink()
                for e in t.iterdir()]
    for entry in entries:
        mode = entry.lstat().st_mode
        if stat.S_ISLNK(mode):
            raise UserError(f"{entry} is a symbolic link: a run folder holds its own files only, and a write through "
                            f"the link would replace what it points to. Replace the link by the file or folder "
                            f"itself, or remove it.")
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) or (entry.name == "tb" and not stat.S_ISDIR(mode)):
            what = "a file where a folder belongs" if stat.S_ISREG(mode) else "a device, a FIFO or a socket"
            raise UserError(f"{entry} is {what}: a run folder holds the files main.py writes there. Remove it.")


def _check_same_settings(run_dir, config):
    """The run folder's settings, refused (a UserError) unless they match `config` in every setting
    that changes what a trial computes."""
    saved = read_run_config(run_dir)
    missing = [k for k in config if k not in saved and k not in PLACEMENT_KEYS]
    if missing:
        raise UserError(f"{run_dir / 'config.json'} lacks the setting(s) {', '.join(missing)}: the folder was "
                        f"made by an earlier version of this code. Run {MIGRATE} {run_dir} once.")
    differ = [k for k in config if k not in PLACEMENT_KEYS and saved.get(k) != config[k]]
    if differ:
        details = ", ".join(f"{k}: folder {saved.get(k)!r} vs now {config[k]!r}" for k in differ)
        raise UserError(f"{run_dir} was made with other settings ({details}). Use a new folder, or "
                        f"--resume {run_dir} to continue with its own settings.")
    return saved


def _union(saved, now):
    if saved is None or now is None:
        return None  # "all classes"
    return list(dict.fromkeys([*saved, *now]))


def class_names_of(config):
    """The class names of a run's dataset (None when it is not prepared here)."""
    path = Path(config["data_dir"] or REPO / "datasets") / config["dataset"] / "processed" / "meta.json"
    try:
        classes = read_json(path, "") if path.is_file() else None
    except UserError:
        return None  # the table then names classes by index
    classes = classes.get("classes") if isinstance(classes, dict) else None
    return [str(c) for c in classes] if isinstance(classes, list) else None


# ---------------------------------------------------------------------------------------------
# Trials
# ---------------------------------------------------------------------------------------------
TRIAL_NAME = re.compile(r"class(?P<c>[0-9]+)_seed(?P<s>[0-9]+)")  # a trial folder's name


def trial_dir(run_dir, c, s):
    return Path(run_dir) / f"class{c}_seed{s}"


def is_finished(folder):
    return (Path(folder) / "results.json").is_file()


@contextmanager
def trial_lock(folder):
    """Hold the trial folder's lock (the folder is created) while the trial runs; yields False at
    once, holding nothing, when another process holds it. Whoever holds it also removes the temp
    files a process killed while writing left in the folder (a 4 MB .last.pt.*.tmp after kill -9),
    when the trial starts and when it ends."""
    folder = make_dir(folder)
    with file_lock(folder / TRIAL_LOCK, blocking=False) as held:
        if held:
            remove_temp_files(folder)
        try:
            yield held
        finally:
            if held:
                remove_temp_files(folder)


def planned_trials(run_dir, config, n_classes=None):
    """Classes and seeds of a run folder: those its settings plan plus those found on disk."""
    found = [(int(m["c"]), int(m["s"])) for path in Path(run_dir).glob("class*_seed*")
             if (m := TRIAL_NAME.fullmatch(path.name))]  # not class0_seed0.bak
    planned = range(n_classes or 0) if config["classes"] is None else config["classes"]
    classes = sorted({*planned, *(c for c, _ in found)})
    seeds = list(dict.fromkeys([*config["seeds"], *sorted({s for _, s in found})]))
    return classes, seeds


def check_run_trials(run_dir, ds=None, settings=True):
    """Refuse (a UserError) a trial folder whose config.json was made with other settings than its
    run's (a trial of another protocol or run copied in, or its config.json edited: its results
    would be averaged into the run's table, or --eval-only would score it as the run's), and, with
    the dataset `ds`, one trained on other images than `ds` holds (its dataset_sha256, or for
    trials of older code its input_shape: the dataset was prepared again since). settings=False
    checks the dataset only (a sweep, before open_run_dir has checked the run folder itself)."""
    run_settings = read_run_config(run_dir) if settings else None
    for path in sorted(Path(run_dir).glob("class*_seed*/config.json")):
        trial = read_json(path, "Restore it from a copy, or delete the trial folder to run it again.")
        trial = trial if isinstance(trial, dict) else {}
        config = trial.get("config") if isinstance(trial.get("config"), dict) else {}
        differ = sorted(k for k in {*run_settings, *config} if k not in PLACEMENT_KEYS
                        and run_settings.get(k) != config.get(k)) if settings else []
        if differ:
            raise UserError(f"{path} was made with other settings than its run ({', '.join(differ[:4])}"
                            f"{', ...' if len(differ) > 4 else ''} differ): a trial of another run copied in, or "
                            f"its config.json edited. Move the trial folder out of {run_dir}, or restore it.")
        trained_on, shape = trial.get("dataset_sha256"), trial.get("input_shape")
        if ds is not None and ((isinstance(trained_on, str) and trained_on != ds.sha256) or
                               (isinstance(shape, list) and tuple(shape) != tuple(ds.shape))):
            raise UserError(f"{path.parent} was trained on other images of {ds.name} than those prepared now (the "
                            f"dataset was prepared again since, with other files or settings). Prepare it as it "
                            f"was, or use a new run folder.")


def write_trial_config(folder, config, ds, c, seed, device, about):
    """The trial's config.json: every setting, the trial, the model's size, the environment, the
    dataset's sources and (folder datasets) the preprocessing score.py repeats for new images."""
    atomic_write_json(Path(folder) / "config.json", {
        "config": config, "class": c, "class_name": ds.classes[c], "seed": seed, "input_shape": list(ds.shape),
        **about, "device": device, "environment": environment(), "dataset_sha256": ds.sha256,
        "dataset_sources": ds.meta.get("sources", []),
        "preprocessing": ds.meta.get("preprocessing")})
