"""Diagnostic: how much choosing the epoch on the test split would add (docs/method.md, departure 4).

The authors' code computes the test AUROC after every epoch. A figure read off such a log (the
best epoch's, or the epoch a run was stopped at by eye) is chosen on the test labels. This script
measures what that choice is worth: it trains the trials exactly as main.py does (same seed, same
settings, same early stopping) and, after each epoch, also scores the test split with the
reconstruction error. Per trial it reports

    val-chosen    the AUROC of the epoch with the lowest validation loss: what main.py reports
                  (it equals that trial's results.json, same seed and settings)
    last          the AUROC of the last epoch trained
    test-chosen   the highest AUROC of any epoch: an oracle, chosen on the test labels

Nothing here feeds a table of this project: the output goes to its own folder (settings, commit
and versions in diagnostic.json, not config.json, so that no run-folder tool mistakes it for a
run), and main.py never looks at the test split before training has ended.

    python scripts/epoch_oracle.py --dataset mnist --model cascade-released --epochs 20 \\
        --precision bf16 --seeds 0 --out runs/diagnostics/mnist-released-e20
"""
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from main import DEFAULTS  # noqa: E402
from models import ModelConfig, build_model  # noqa: E402
from tool.classical import CLASSICAL  # noqa: E402
from tool.data.datasets import scale_images  # noqa: E402
from tool.data.prepare import ensure_prepared  # noqa: E402
from tool.data.protocol import check_trials, make_split  # noqa: E402
from tool.errors import UserError, cli  # noqa: E402
from tool.evaluation import compute_metrics  # noqa: E402
from tool.flags import make_parser, overrides_from  # noqa: E402
from tool.io import atomic_write_json, atomic_write_text, make_dir, read_json  # noqa: E402
from tool.parallel import run_trials  # noqa: E402
from tool.provenance import environment, git_commit  # noqa: E402
from tool.scores import network_outputs  # noqa: E402
from tool.seeding import seed_everything  # noqa: E402
from tool.settings import check_model_size, resolve_device, validate  # noqa: E402
from tool.train import TrainConfig, train_model  # noqa: E402


def oracle_trial(config, ds, target_class, seed, out_dir, device, log=print):
    """Train one trial as main.py does, scoring the test split after every epoch; write and
    return its record ({"metrics": {"val-chosen" | "last" | "test-chosen": {"auroc": ...}}, ...})."""
    out_dir = Path(out_dir)
    seed_everything(seed)
    split = make_split(ds, config["protocol"], target_class, config["val_fraction"], seed)
    model = build_model(config["model"], ds.shape, ModelConfig.from_settings(config)).to(device)
    targets = split.test_targets.numpy()
    per_epoch = {}

    def on_epoch(epoch, trained):  # eval mode, no random numbers drawn: training goes on unchanged
        per_epoch[epoch] = compute_metrics(network_outputs(trained, split.test)["recon"].numpy(), targets)["auroc"]

    with tempfile.TemporaryDirectory(dir=out_dir) as scratch:
        result = train_model(model, scale_images(split.train, device), scale_images(split.val, device),
                             TrainConfig.from_settings(config), Path(scratch) / "last.pt", seed,
                             desc=f"class {target_class} seed {seed}", log=log,
                             on_epoch=on_epoch)
    best_test = max(per_epoch, key=per_epoch.get)
    record = {"class": target_class, "class_name": ds.classes[target_class], "seed": seed,
              "metrics": {"val-chosen": {"auroc": per_epoch[result.best_epoch]},
                          "last": {"auroc": per_epoch[result.epochs_trained]},
                          "test-chosen": {"auroc": per_epoch[best_test]}},
              "val_chosen_epoch": result.best_epoch, "test_chosen_epoch": best_test,
              "epochs_trained": result.epochs_trained, "stopped_early": result.stopped_early,
              "epochs": [{"epoch": h["epoch"], "val_loss": h["val_loss"], "test_auroc": per_epoch[h["epoch"]]}
                         for h in result.history]}
    atomic_write_json(out_dir / f"class{target_class}_seed{seed}.json", record)
    return record


CHOICES = ("val-chosen", "last", "test-chosen")


def summary(records):
    """A Markdown table: per class, the mean over seeds of each AUROC (%) and of the epochs."""
    def auroc(rs, choice):
        return 100 * np.mean([r["metrics"][choice]["auroc"] for r in rs])

    rows = ["| class | val-chosen (main.py) | last epoch | test-chosen (oracle) | val-chosen epoch | "
            "test-chosen epoch |", "|---|---:|---:|---:|---:|---:|"]
    for c in sorted({r["class"] for r in records}):
        mine = [r for r in records if r["class"] == c]
        rows.append(f"| {mine[0]['class_name']} | " + " | ".join(f"{auroc(mine, k):.2f}" for k in CHOICES)
                    + f" | {np.mean([r['val_chosen_epoch'] for r in mine]):.1f}"
                      f" | {np.mean([r['test_chosen_epoch'] for r in mine]):.1f} |")
    rows.append("| mean | " + " | ".join(f"**{auroc(records, k):.2f}**" for k in CHOICES) + " | | |")
    return "\n".join(rows) + "\n"


def main(argv=None):
    parser = make_parser(DEFAULTS, __doc__, prog="scripts/epoch_oracle.py")  # main.py's flags (no abbreviations)
    parser.add_argument("--out", required=True, help="a new folder for the per-trial records and summary.md")
    args = parser.parse_args(argv)
    out = Path(args.out)
    given = overrides_from(args, DEFAULTS)
    ignored = sorted(set(given) & {"draw_figures", "output_dir", "checkpoint_seconds", "score"})
    if ignored:
        raise UserError(f"this diagnostic writes only to --out and scores recon: drop "
                        f"{', '.join('--' + k.replace('_', '-') for k in ignored)}")
    config = {**DEFAULTS, "seeds": [0], **given, "draw_figures": False}
    validate(config)
    if config["protocol"] != "one-anomalous-class":
        raise UserError("this diagnostic follows the paper's protocol only")
    if config["model"] in CLASSICAL:
        raise UserError(f"--model {config['model']} is a classical detector: it has no epochs to choose")
    ds = ensure_prepared(config["dataset"], config["data_dir"])
    classes = ds.class_list(config["classes"])
    check_trials(ds, config["protocol"], classes, config["val_fraction"])  # as main.py: before anything is written
    check_model_size(config, ds.shape)
    try:
        taken = out.exists() and (not out.is_dir() or any(out.iterdir()))  # an empty folder (a failed start) is reused
    except OSError as error:
        raise UserError(f"cannot read {out} ({error.strerror}); give another folder with --out.") from None
    if taken:
        raise UserError(f"{out} exists; give a new folder with --out (nothing is overwritten).")
    make_dir(out)
    atomic_write_json(out / "diagnostic.json", {"settings": config, "commit": git_commit(),
                                            "environment": environment()})
    run_trials(oracle_trial, config, ds, [(c, s) for s in config["seeds"] for c in classes], out,
               resolve_device(config["device"]))
    records = [read_json(out / f"class{c}_seed{s}.json", "Run this diagnostic again into a new folder.")
               for s in config["seeds"] for c in classes]
    table = summary(records)
    atomic_write_text(out / "summary.md", table)
    print(table + f"\nwritten: {out / 'summary.md'}")


if __name__ == "__main__":
    cli(main)(sys.argv[1:])
