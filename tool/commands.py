"""main.py's command line: a sweep of trials (new, resumed, or sharing a --run-dir), and the
actions on a run folder (--eval-only, --table, --compare, --export, --figures, --leakage).

main.py holds the settings and the trial; everything here is the machinery around them, and gets
both from main.py as arguments (no module of tool/ imports main.py).
"""
import re
import sys
from datetime import datetime
from pathlib import Path

import torch
from tqdm import tqdm

from tool.constants import read_config_file
from tool.data.datasets import load_dataset
from tool.data.prepare import ensure_prepared
from tool.data.protocol import check_trials, make_split
from tool.errors import UserError
from tool.evaluation import evaluate
from tool.flags import make_parser, overrides_from
from tool.parallel import run_trials, trial_threads
from tool.provenance import git_commit
from tool.report import figures
from tool.report import tables as report
from tool.report.export import export
from tool.report.leakage import run_leakage
from tool.results import read_results, write_results
from tool.checkpoints import load_trial_model, write_scoring
from tool.runs import (check_own_files, check_run_trials, is_finished, new_run_dir, open_run_dir, read_run_config,
                       trial_dir, trial_lock)
from tool.scores import Scorer
from tool.settings import check_model_size, check_score, describe, epochs_note, resolve_device, validate
from tool.speed import cpu_lacks_bf16


def setting_comments(main_file):
    """Each constant's comment in main.py, as the help text of its command-line flag."""
    line = re.compile(r"^([A-Z_]+) = .*?  # (.*)$")
    return {m[1].lower(): m[2] for text in Path(main_file).read_text().splitlines() if (m := line.match(text))}


def parse(argv, defaults, doc, main_file):
    parser = make_parser(defaults, doc, setting_comments(main_file))
    parser.add_argument("config_file", nargs="?", metavar="CONFIG.py",
                        help="a file of main.py's constants that differ for this run (configs/); flags override it")
    actions = parser.add_argument_group("actions (instead of a new sweep)")
    what = actions.add_mutually_exclusive_group()
    what.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted sweep with its own settings")
    what.add_argument("--eval-only", metavar="RUN_DIR", help="score a run's checkpoints again, print its table")
    what.add_argument("--table", metavar="RUN_DIR", help="print a run's table from its results.json files")
    what.add_argument("--compare", metavar="DIR",
                      help="one table of every run folder below DIR, beside the published figures")
    what.add_argument("--export", metavar="RUN_DIR",
                      help="copy a run's results (no checkpoints or logs) to results/<dataset>/<model>/")
    what.add_argument("--figures", metavar="RUN_DIR", help="draw a run's figures again from its results and checkpoints")
    what.add_argument("--leakage", metavar="RUN_DIR",
                      help="per class, how much it mixes with the other classes: in pixels and in the run's latent space")
    actions.add_argument("--ensemble", action="store_true",
                         help="with --compare: after each network row of several seeds, their seed ensemble "
                              "(the mean of the seeds' standardised scores)")
    actions.add_argument("--run-dir", metavar="DIR",
                         help="use DIR as the sweep folder (shared by cluster jobs; finished trials are skipped)")
    args = parser.parse_args(argv)
    given = overrides_from(args, defaults)
    if args.config_file:
        given = {**read_config_file(args.config_file, defaults), **given}
    return args, given


def refuse(given, allowed, action, run_dir_given=False):
    extra = set(given) - set(allowed)
    if extra or run_dir_given:
        flags = ", ".join("--" + k.replace("_", "-") for k in sorted(extra)) or "--run-dir"
        raise UserError(f"{action} takes its settings from the run folder; drop {flags}")


def command_line(argv, defaults, run_trial, doc, main_file):
    """Everything main.py does; returns the run folder (or what the action returns)."""
    args, given = parse(argv, defaults, doc, main_file)
    if args.config_file and any((args.resume, args.eval_only, args.table, args.compare, args.export, args.figures,
                                 args.leakage)):
        raise UserError("a config file sets up a new sweep; an action on a run folder takes none")
    if "score" in given and (args.compare or args.eval_only or args.table or args.figures):
        check_score(given["score"], allow_all=not args.figures)
    if args.ensemble and not args.compare:
        raise UserError("--ensemble goes with --compare DIR (a row more per network run of several seeds).")
    if args.compare or args.export:
        refuse(given, ("score",) if args.compare else (), "--compare" if args.compare else "--export", args.run_dir)
        return report.compare(args.compare, given.get("score", defaults["score"]), args.ensemble) if args.compare \
            else export(args.export)
    if args.leakage:
        refuse(given, ("device",), "--leakage", args.run_dir)
        return run_leakage(args.leakage, resolve_device(given.get("device", "auto")))
    if args.eval_only or args.table or args.figures:
        refuse(given, ("device", "score"), "--eval-only, --table and --figures each", args.run_dir)
        if args.table:  # prints only: a run's own table.md, table.csv and roc_all.png are the sweep's to write
            return report.run_table(args.table, score=given.get("score"), write=False)
        if args.figures:
            figures.redraw(args.figures, resolve_device(given.get("device", "auto")), given.get("score"))
            return report.run_table(args.figures, score=given.get("score"))  # and roc_all.png
        return reevaluate(args.eval_only, defaults, given.get("device", "auto"), given.get("score"))
    if args.resume:
        refuse(given, ("device", "jobs", "classes", "seeds", "data_dir"), "--resume", args.run_dir)
        config = {**defaults, **read_run_config(args.resume), **given}
        # a dataset is prepared on first use only in a folder the user chose, never in one a run folder names
        prepare = config["data_dir"] is None or "data_dir" in given
    else:
        config, prepare = {**defaults, **given}, True
    return sweep(config, defaults, run_trial, args.resume or args.run_dir, prepare)


def sweep(config, defaults, run_trial, run_dir=None, prepare=True):
    """Every planned trial of `config` that has not finished, into a new run folder (or `run_dir`);
    `prepare`: a built-in dataset not prepared yet in DATA_DIR is prepared there first."""
    validate(config)
    ds = ensure_prepared(config["dataset"], config["data_dir"]) if prepare else \
        load_dataset(config["dataset"], config["data_dir"])
    if config["classes"] is not None:
        config["classes"] = ds.class_list(config["classes"])
    # every planned trial's split, and the model at the data's size, checked before anything is created
    check_trials(ds, config["protocol"], ds.class_list(config["classes"]), config["val_fraction"])
    check_model_size(config, ds.shape)
    print(describe(config, defaults))
    smallest = min(int(sum(_normal_train(ds, config["protocol"], c))) for c in ds.class_list(config["classes"]))
    note = epochs_note(config, smallest - int(round(config["val_fraction"] * smallest)))
    if note:
        print(f"{config['dataset']}: {note}")
    device = resolve_device(config["device"])
    print(f"device: {device}")
    if config["precision"] == "bf16" and cpu_lacks_bf16(device):
        print("warning: this CPU has no AVX-512 bf16 or AMX: bf16 is emulated here and trains far slower "
              "than fp32 (8.6x for cascade on one such CPU); use --precision fp32", file=sys.stderr)
    if run_dir and Path(run_dir).is_dir():
        check_run_trials(run_dir, ds, settings=False)  # before the run's config.json is touched
    run_dir = open_run_dir(run_dir, config) if run_dir else new_run_dir(config)
    trials = [(c, s) for s in config["seeds"] for c in ds.class_list(config["classes"])]
    todo = [(c, s) for c, s in trials if not is_finished(trial_dir(run_dir, c, s))]
    done = len(trials) - len(todo)
    print(f"run folder: {run_dir}\n{len(todo)} trial(s) to run" + (f", {done} already finished" if done else ""))
    run_trials(locked(run_trial), config, ds, todo, run_dir, device)
    report.run_table(run_dir)
    print(f"results: {run_dir}")
    return run_dir


def _normal_train(ds, protocol, c):
    return (ds.train_labels != c) if protocol == "one-anomalous-class" else (ds.train_labels == c)


class locked:
    """run_trial under the trial's lock, in its folder: a finished trial is read back, not run
    again; one that another process is running is skipped (None); the resumable last.pt goes
    once the trial has finished. (A class, so that worker processes can unpickle it.)"""

    def __init__(self, run_trial):
        self.run_trial = run_trial

    def __call__(self, config, ds, c, seed, run_dir, device, log=print):
        folder = trial_dir(run_dir, c, seed)
        if is_finished(folder):
            return read_results(folder)
        check_own_files(folder, itself=True)  # train.log, tb/, last.pt ...: the trial's own files, no link or FIFO
        with trial_lock(folder) as held:  # a trial runs in one process at a time (--run-dir shared by jobs)
            if not held:
                log(f"class {c} seed {seed}: skipped here, another process is running it (it holds "
                    f"{folder / '.lock'}); python main.py --table {run_dir} shows it once it has finished")
                return None
            if is_finished(folder):  # finished by another process since the check above
                return read_results(folder)
            results = self.run_trial(config, ds, c, seed, folder, device, log)
            (folder / "last.pt").unlink(missing_ok=True)
            log(f"class {c} seed {seed}: " + "  ".join(f"{name} AUROC {100 * m['auroc']:.2f}"
                                                       for name, m in results["metrics"].items())
                + f"  ({results['epochs_trained']} epochs, best {results.get('best_epoch', '-')}, "
                  f"{results['total_seconds']:.1f} s)")
            return results


def reevaluate(run_dir, defaults, device_name="auto", score_choice=None):
    """--eval-only: score every trained trial's best.pt again with this code's scores, without
    training; print the table (4 decimals, of SCORE `score_choice`). A finished trial whose scores
    this code computes differently, or which lacks some, gets them written into its results.json,
    scores.npz and bank.pt; the values they replace are kept under "evaluations", with this code's commit."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    check_own_files(run_dir)  # it rewrites results.json, scores.npz and bank.pt
    device = resolve_device(device_name)
    torch.set_num_threads(trial_threads(config, 1, device))  # as in training: float sums depend on it
    ds = load_dataset(config["dataset"], config["data_dir"])
    check_run_trials(run_dir, ds)
    folders = sorted(p for p in run_dir.glob("class*_seed*") if (p / "best.pt").is_file())
    if not folders:
        raise UserError(f"{run_dir} holds no trained trial (no class*_seed*/best.pt).")
    results, changed = {}, {}
    for folder in tqdm(folders, desc="re-evaluating", unit="trial", leave=False, disable=None):
        trial, model = load_trial_model(folder, device, (config["dataset"], ds.shape))
        settings = {**defaults, **trial["config"]}
        split = make_split(ds, settings["protocol"], trial["class"], settings["val_fraction"], trial["seed"])
        scorer = Scorer.fit(model, split.train, split.val, trial["seed"], settings["threshold_percentile"])
        test_scores = scorer.scores(split.test)
        evaluated = evaluate(test_scores, split.test_targets, scorer)
        results[(trial["class"], trial["seed"])] = {**trial, **evaluated}
        if not is_finished(folder):
            continue  # an interrupted trial: scored here, but its record is written when it finishes
        saved = read_results(folder)
        differ = [name for name, m in evaluated["metrics"].items() if saved["metrics"].get(name) != m]
        if differ:
            changed[folder.name] = differ
            entry = {"commit": git_commit(), "written": datetime.now().isoformat(), "scores": differ,
                     "previous": {name: saved["metrics"][name] for name in differ if name in saved["metrics"]}}
            write_scoring(folder, scorer)
            write_results(folder, {**saved, **evaluated, "evaluations": [*saved.get("evaluations", []), entry]},
                          split.test_targets, test_scores)
    report.run_table(run_dir, results, decimals=4, write=False, score=score_choice)
    if changed:
        print(f"scored anew and written ({len(changed)} of {len(results)} trials; the values replaced are kept "
              f"under 'evaluations' in results.json): " + "; ".join(f"{k}: {', '.join(v)}" for k, v in changed.items()))
    else:
        print(f"every re-evaluated trial matches its saved results.json exactly ({len(results)} trials)")
    return results
