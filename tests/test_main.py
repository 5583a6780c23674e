"""Tests of main.py: run_trial end to end, repeatability, the test split kept from training, --eval-only, CLI."""
import json
from pathlib import Path

import numpy as np
import torch

import main
from conftest import command, copy_run, leftovers, one_error, results_of, run_main, write_images
from tool.data.folder import prepare_folder

FAST = ["--epochs", "6", "--patience", "3"]


def test_training_beats_chance_and_writes_everything(data_dir, tmp_path):
    run_dir = run_main(data_dir, tmp_path, "--classes", "0", "--seeds", "0", "--epochs", "30")
    trial = run_dir / "class0_seed0"
    result = results_of(run_dir)["class0_seed0"]
    # digit 0 as the anomaly: measured AUROC 0.95 with this setting; the floor leaves a wide margin
    assert result["metrics"]["recon"]["auroc"] >= 0.8
    conv = {"recon", "latent-knn", "latent-lof", "memory", "fused", "fused-lof"}  # the MLP's more: tests/test_scores.py
    assert set(result["metrics"]) == set(result["thresholds"]) == set(result["test_scores"]) == conv
    for name in conv:
        assert len(result["test_scores"][name]) == len(result["targets"]) == sum(result["counts"]["test"])
        assert set(result["metrics"][name]) == {"auroc", "auprc", "f1_oracle", "f1_val_threshold"}
    assert sum(result["targets"]) == result["counts"]["test"][1]
    assert result["threshold_percentile"] == 95.0
    assert 1 <= result["best_epoch"] <= result["epochs_trained"] <= 30
    config = json.loads((trial / "config.json").read_text())
    assert config["seed"] == 0 and config["config"]["model"] == "cascade"
    for key in ("torch", "numpy", "git_commit", "cuda"):
        assert key in config["environment"]
    assert (trial / "best.pt").is_file() and not (trial / "last.pt").exists()
    assert any((trial / "tb").iterdir())  # tensorboard events
    assert (run_dir / "table.md").is_file() and (run_dir / "table.csv").is_file()
    assert "mean" in (run_dir / "table.md").read_text()


def test_same_seed_same_scores_other_seed_other_scores(data_dir, tmp_path):
    first = results_of(run_main(data_dir, tmp_path / "a", "--classes", "3", "--seeds", "0", *FAST))
    again = results_of(run_main(data_dir, tmp_path / "b", "--classes", "3", "--seeds", "0", *FAST))
    other = results_of(run_main(data_dir, tmp_path / "c", "--classes", "3", "--seeds", "1", *FAST))
    assert first["class3_seed0"]["test_scores"] == again["class3_seed0"]["test_scores"]
    assert first["class3_seed0"]["metrics"] == again["class3_seed0"]["metrics"]
    assert first["class3_seed0"]["test_scores"]["recon"] != other["class3_seed1"]["test_scores"]["recon"]


def test_test_split_never_reaches_training(data_dir, tmp_path, monkeypatch):
    from tool import train

    seen = []
    real = train.train_model

    def spy(model, train_images, val_images, *args, **kwargs):
        seen.append((train_images.clone(), val_images.clone()))
        return real(model, train_images, val_images, *args, **kwargs)

    monkeypatch.setattr(train, "train_model", spy)
    run_main(data_dir, tmp_path, "--classes", "2", "--seeds", "0", "--epochs", "1")
    test_images = torch.load(Path(data_dir) / "digits" / "processed" / "test.pt")["images"]
    test_rows = {row.numpy().tobytes() for row in (test_images.float() / 255 - 0.5) / 0.5}
    (train_x, val_x), = seen
    for tensor in (train_x, val_x):
        assert not any(row.cpu().numpy().tobytes() in test_rows for row in tensor)


def test_eval_only_reproduces_the_table(data_dir, tmp_path, capsys):
    run_dir = run_main(data_dir, tmp_path, "--classes", "7", "8", "--seeds", "0", *FAST)
    saved = results_of(run_dir)
    capsys.readouterr()
    evaluated = main.run(["--eval-only", str(run_dir)])
    out = capsys.readouterr().out
    assert "matches its saved results.json exactly (2 trials)" in out
    for (c, s), result in evaluated.items():
        assert result["metrics"] == saved[f"class{c}_seed{s}"]["metrics"]
    auroc = np.mean([r["metrics"]["fused-lof"]["auroc"] for r in saved.values()]) * 100
    assert "score fused-lof" in out and f"{auroc:.4f}" in out  # the mean row of the run's SCORE (best), 4 decimals


def test_command_line_errors_exit_2_without_traceback(tmp_path):
    for args in (["--epochs", "x"], ["--model", "nope"], ["--resume", str(tmp_path)]):
        one_error(command("main.py", "--data-dir", tmp_path, *args, timeout=120))


def test_eval_only_adds_the_scores_an_older_trial_lacks(data_dir, tmp_path, capsys):
    run_dir = run_main(data_dir, tmp_path, "--classes", "4", "--seeds", "0", *FAST)
    trial = run_dir / "class4_seed0"
    now = results_of(run_dir)["class4_seed0"]
    # the trial as a version of this code with the paper's score only wrote it (migrated: scripts/migrate_runs.py)
    old = {k: v for k, v in now.items() if k not in ("test_scores", "targets")}
    old.update(metrics={"recon": now["metrics"]["recon"]}, thresholds={"recon": now["thresholds"]["recon"]},
               validation_stats={})
    (trial / "results.json").write_text(json.dumps(old))
    np.savez(trial / "scores.npz", targets=np.array(now["targets"], np.uint8),
             recon=np.array(now["test_scores"]["recon"], np.float16))
    (trial / "bank.pt").unlink()
    assert set(results_of(run_dir)["class4_seed0"]["metrics"]) == {"recon"}
    capsys.readouterr()
    main.run(["--eval-only", str(run_dir)])
    assert "scored anew and written (1 of 1 trials" in capsys.readouterr().out
    again = results_of(run_dir)["class4_seed0"]
    assert again["metrics"] == now["metrics"] and again["test_scores"] == now["test_scores"]
    assert again["history"] == now["history"] and (trial / "bank.pt").is_file()
    (entry,) = again["evaluations"]
    assert entry["scores"] == ["latent-knn", "latent-lof", "memory", "fused", "fused-lof"] and entry["previous"] == {}
    # nothing differs any more: a second --eval-only writes nothing
    main.run(["--eval-only", str(run_dir)])
    assert "matches its saved results.json exactly (1 trials)" in capsys.readouterr().out
    assert len(results_of(run_dir)["class4_seed0"]["evaluations"]) == 1


# ---------------------------------------------------------------------------------------------
# A full disk, a read-only folder, a file where a folder must be: one error line, exit code 2,
# nothing half-written, no empty folder (tests/faults.py makes the faults: the tests run as root)
# ---------------------------------------------------------------------------------------------
def sweep(data_dir, *args):
    return ["main.py", "--data-dir", data_dir, "--epochs", "1", "--min-steps", "0", "--classes", "0", "--seeds", "0", "--jobs", "1",
            "--draw-figures", "false", *args]


def test_a_full_disk_stops_a_new_run_with_one_error_and_no_folder(data_dir, tmp_path):
    out = tmp_path / "runs"
    done = command(*sweep(data_dir, "--output-dir", out), fault="full-disk", root=tmp_path)
    one_error(done, "cannot write", "config.json (no space left on the device): free some space or choose another "
                                    "folder")
    assert not out.exists()  # not even the empty OUTPUT_DIR/digits/cascade/ it made on the way


def test_torch_save_on_a_full_disk_mid_training_is_one_error_and_the_trial_resumes(data_dir, tmp_path):
    out = tmp_path / "runs"
    done = command(*sweep(data_dir, "--output-dir", out), fault="full-disk:.last.pt.*", root=tmp_path)
    one_error(done, "last.pt (", "free some space or choose another folder")
    run_dir, = out.glob("digits/cascade/*")
    assert leftovers(out) == [] and not (run_dir / "class0_seed0" / "last.pt").exists()
    assert "epochs_trained" in results_of(Path(main.run(["--resume", str(run_dir)])))["class0_seed0"]


def test_a_read_only_output_folder_is_one_error(data_dir, tmp_path):
    done = command(*sweep(data_dir, "--output-dir", tmp_path / "runs"), fault="read-only", root=tmp_path)
    one_error(done, f"cannot write {tmp_path / 'runs'}", "(the folder is not writable): make it writable or choose "
                                                         "another folder")
    assert list(tmp_path.iterdir()) == []


def test_table_only_prints_even_on_a_read_only_run_folder_and_changes_nothing(finished_run, tmp_path):
    """--table prints a run's table; the run's own table.md, table.csv and roc_all.png are the
    sweep's (a --table of another score rewrote a committed run's table.md before)."""
    run_dir = copy_run(finished_run, tmp_path)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    for score in ("best", "recon"):
        done = command("main.py", "--table", run_dir, "--score", score, fault="read-only", root=run_dir)
        assert done.returncode == 0 and "mean" in done.stdout, done.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    one_error(command("main.py", "--table", run_dir / "class0_seed0"), "is a trial folder; give its run folder")


def test_run_dir_on_a_read_only_run_folder_is_one_error(finished_run, data_dir, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    done = command(*sweep(data_dir, "--run-dir", run_dir, "--seeds", "1"), fault="read-only", root=run_dir)
    one_error(done, f"cannot write {run_dir}", "(the folder is not writable)")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_run_dir_that_is_a_file_is_one_error(data_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("mine\n")
    done = command(*sweep(data_dir, "--run-dir", tmp_path / "notes.txt"))
    one_error(done, f"{tmp_path / 'notes.txt'} is a file, not a folder")
    assert (tmp_path / "notes.txt").read_text() == "mine\n" and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


# ---------------------------------------------------------------------------------------------
# A trial that cannot be split: refused before any folder is made and before any training
# ---------------------------------------------------------------------------------------------
def test_a_class_whose_test_split_holds_no_anomaly_is_refused_up_front(tmp_path):
    rng = np.random.default_rng(0)
    for split, kind, n in (("train", "good", 6), ("train", "scratch", 3), ("test", "good", 3)):
        write_images(tmp_path / "images" / split / kind, "bright" if kind == "good" else "striped", n, rng)
    prepare_folder(tmp_path / "images", "parts", tmp_path / "data", verbose=False)
    done = command("main.py", "--dataset", "parts", "--data-dir", tmp_path / "data", "--protocol", "one-normal-class",
                   "--classes", "good", "--seeds", "0", "--output-dir", tmp_path / "runs")
    one_error(done, "class 0 (good) of parts, --protocol one-normal-class: the test split holds no anomalous image "
                    "(its 3 test images are all normal), and the metrics need both. Add test images of other classes")
    assert not (tmp_path / "runs").exists() and "epoch" not in done.stdout


def test_a_val_fraction_that_leaves_too_few_images_is_refused_up_front(data_dir, tmp_path):
    done = command(*sweep(data_dir, "--output-dir", tmp_path / "runs", "--val-fraction", "0.999"))
    one_error(done, "--val-fraction (VAL_FRACTION) 0.999 holds out 1132 of its 1133 normal training images",
              "a value in [0.0005, 0.9986] works for every planned class")
    assert not (tmp_path / "runs").exists()
