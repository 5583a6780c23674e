"""Tests of main.py: run_trial end to end, repeatability, the test split kept from training, --eval-only, CLI."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import main
from conftest import results_of, run_main
from tool.evaluation import SCORES
from tool.io import REPO

FAST = ["--epochs", "6", "--patience", "3"]


def test_training_beats_chance_and_writes_everything(data_dir, tmp_path):
    run_dir = run_main(data_dir, tmp_path, "--classes", "0", "--seeds", "0", "--epochs", "30")
    unit = run_dir / "class0_seed0"
    result = results_of(run_dir)["class0_seed0"]
    # digit 0 as the anomaly: measured AUROC 0.95 with this setting; the floor leaves a wide margin
    assert result["metrics"]["recon"]["auroc"] >= 0.8
    assert set(result["metrics"]) == set(result["thresholds"]) == set(result["test_scores"]) == set(SCORES)
    for name in SCORES:
        assert len(result["test_scores"][name]) == len(result["targets"]) == sum(result["counts"]["test"])
        assert set(result["metrics"][name]) == {"auroc", "auprc", "f1_oracle", "f1_val_threshold"}
    assert sum(result["targets"]) == result["counts"]["test"][1]
    assert result["threshold_percentile"] == 95.0
    assert 1 <= result["best_epoch"] <= result["epochs_trained"] <= 30
    config = json.loads((unit / "config.json").read_text())
    assert config["seed"] == 0 and config["config"]["model"] == "cascade"
    for key in ("torch", "numpy", "git_commit", "cuda"):
        assert key in config["environment"]
    assert (unit / "best.pt").is_file() and not (unit / "last.pt").exists()
    assert any((unit / "tb").iterdir())  # tensorboard events
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
    seen = []
    real = main.train_model

    def spy(model, train_images, val_images, *args, **kwargs):
        seen.append((train_images.clone(), val_images.clone()))
        return real(model, train_images, val_images, *args, **kwargs)

    monkeypatch.setattr(main, "train_model", spy)
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
    auroc = np.mean([r["metrics"]["recon"]["auroc"] for r in saved.values()]) * 100
    assert f"{auroc:.4f}" in out  # the mean row, to 4 decimals


def test_command_line_errors_exit_2_without_traceback(tmp_path):
    for args in (["--epochs", "x"], ["--model", "nope"], ["--resume", str(tmp_path)]):
        done = subprocess.run([sys.executable, "main.py", "--data-dir", str(tmp_path), *args], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and done.stderr.startswith("error: ")


def test_eval_only_adds_the_scores_an_older_trial_lacks(data_dir, tmp_path, capsys):
    run_dir = run_main(data_dir, tmp_path, "--classes", "4", "--seeds", "0", *FAST)
    trial = run_dir / "class4_seed0"
    now = results_of(run_dir)["class4_seed0"]
    # the trial as this code wrote it before it had several scores: recon only, lists in results.json
    old = {k: v for k, v in now.items() if k not in ("metrics", "thresholds", "threshold_percentile", "fusion",
                                                        "test_scores", "targets")}
    old.update(metrics=now["metrics"]["recon"], scores=now["test_scores"]["recon"], targets=now["targets"],
               threshold={"value": now["thresholds"]["recon"], "percentile_of_validation_scores": 95.0})
    (trial / "results.json").write_text(json.dumps(old))
    (trial / "scores.npz").unlink()
    (trial / "bank.pt").unlink()
    assert set(results_of(run_dir)["class4_seed0"]["metrics"]) == {"recon"}  # read as its one score
    capsys.readouterr()
    main.run(["--eval-only", str(run_dir)])
    assert "scored anew and written (1 of 1 trials" in capsys.readouterr().out
    again = results_of(run_dir)["class4_seed0"]
    assert again["metrics"] == now["metrics"] and again["test_scores"] == now["test_scores"]
    assert again["history"] == now["history"] and (trial / "bank.pt").is_file()
    (entry,) = again["evaluations"]
    assert entry["scores"] == ["latent-knn", "memory", "fused"] and entry["previous"] == {}
    # nothing differs any more: a second --eval-only writes nothing
    main.run(["--eval-only", str(run_dir)])
    assert "matches its saved results.json exactly (1 trials)" in capsys.readouterr().out
    assert "evaluations" in results_of(run_dir)["class4_seed0"] and len(results_of(run_dir)["class4_seed0"]["evaluations"]) == 1
