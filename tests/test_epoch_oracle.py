"""scripts/epoch_oracle.py: scoring the test split after every epoch changes nothing in training."""
import json

from conftest import command, one_error, run_main
from tool.results import read_results


def test_val_chosen_epoch_is_what_main_reports(tmp_path, data_dir):
    run = run_main(data_dir, tmp_path / "runs", "--classes", "0", "--seeds", "0", "--epochs", "3")
    out = tmp_path / "oracle"
    done = command("scripts/epoch_oracle.py", "--dataset", "digits", "--model", "cascade", "--classes", "0",
                   "--seeds", "0", "--epochs", "3", "--min-steps", "0", "--jobs", "1", "--data-dir", data_dir,
                   "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "class0_seed0.json").read_text())
    saved = read_results(run / "class0_seed0")
    assert record["val_chosen_epoch"] == saved["best_epoch"]
    assert record["metrics"]["val-chosen"]["auroc"] == saved["metrics"]["recon"]["auroc"]
    assert [e["epoch"] for e in record["epochs"]] == [1, 2, 3]
    aurocs = [e["test_auroc"] for e in record["epochs"]]
    assert record["metrics"]["test-chosen"]["auroc"] == max(aurocs)
    assert record["metrics"]["last"]["auroc"] == aurocs[-1]
    assert "| mean |" in (out / "summary.md").read_text()
    assert (out / "diagnostic.json").is_file() and not (out / "config.json").exists()  # --compare skips it
    assert not list(out.glob("tmp*"))  # the checkpoint's scratch folder is gone

    one_error(command("scripts/epoch_oracle.py", "--dataset", "digits", "--model", "cascade", "--data-dir", data_dir,
                      "--out", out), "exists", "--out")
    one_error(command("scripts/epoch_oracle.py", "--dataset", "digits", "--model", "cascade", "--seeds", "x",
                      "--out", tmp_path / "new"), "--seeds", "scripts/epoch_oracle.py --help")
    one_error(command("scripts/epoch_oracle.py", "--dataset", "digits", "--model", "cascade", "--epochs", "0",
                      "--out", tmp_path / "new"), "--epochs")
    for flags, text in ((["--seed", "3"], "unrecognized arguments: --seed"),  # no abbreviation starts a default run
                        (["--model", "knn"], "classical detector"),
                        (["--val-fraction", "0.999"], "--val-fraction"),  # found before anything is written
                        (["--draw-figures", "true"], "drop --draw-figures")):
        one_error(command("scripts/epoch_oracle.py", "--dataset", "digits", "--data-dir", data_dir, *flags,
                          "--out", tmp_path / "new"), text)
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()  # what a start that failed on a full disk leaves: used, not refused
    done = command("scripts/epoch_oracle.py", "--dataset", "digits", "--model", "cascade", "--classes", "0",
                   "--epochs", "1", "--min-steps", "0", "--jobs", "1", "--data-dir", data_dir, "--out", tmp_path / "empty")
    assert done.returncode == 0 and (tmp_path / "empty" / "summary.md").is_file(), done.stderr[-2000:]
