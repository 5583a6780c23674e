"""Tests of tool/report/ensemble.py: a seed ensemble from the results files, standardised per trial, and
its rows in --compare."""
import shutil

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import main
from conftest import command, one_error, run_main
from tool.report.ensemble import ensemble_scores, ensemble_summary
from tool.errors import UserError
from tool.results import read_results, read_scores, write_results
from tool.scores import fusions

METRICS = dict.fromkeys(("auroc", "auprc", "f1_oracle", "f1_val_threshold"), 0.5)


def trial(folder, seed, targets, scores, fusion):
    folder.mkdir(parents=True)
    names = [*scores, *fusions(fusion, scores)]
    write_results(folder, {"class": 0, "seed": seed, "metrics": {n: METRICS for n in names},
                           "thresholds": dict.fromkeys(names, 1.0), "threshold_percentile": 95.0, "validation_stats": fusion,
                           "history": {}}, targets, scores)
    return folder, read_results(folder)


def test_each_seed_is_standardised_by_its_own_validation_statistics_before_the_mean(tmp_path):
    rng = np.random.default_rng(0)
    targets = np.repeat([0, 1], 500)
    signal = targets * 1.0
    a = signal + rng.normal(0, 1.0, 1000)  # two noisy detectors of the same signal...
    b = 1000 * (signal + rng.normal(0, 1.0, 1000)) + 5000  # ...the second on a scale 1000 times larger
    folders, results = zip(trial(tmp_path / "s0", 0, targets, {"recon": a}, {"recon": [0.0, 1.0]}),
                           trial(tmp_path / "s1", 1, targets, {"recon": b}, {"recon": [5000.0, 1000.0]}))
    got_targets, together = ensemble_scores(folders, results, "recon")
    assert got_targets.tolist() == targets.tolist()
    stored_a, stored_b = (read_scores(folder)[1]["recon"] for folder in folders)  # as scores.npz keeps them
    np.testing.assert_allclose(together, (stored_a + (stored_b - 5000) / 1000) / 2)
    auroc = [roc_auc_score(targets, x) for x in (a, b, together)]
    assert auroc[2] > max(auroc[:2]) + 0.01  # independent errors average out
    naive = roc_auc_score(targets, (stored_a + stored_b) / 2)  # without standardising: b alone
    assert abs(naive - auroc[1]) < 0.005


def test_fused_is_averaged_as_it_is_and_a_missing_statistic_or_other_test_split_is_refused(tmp_path):
    targets = np.array([0, 0, 1, 1])
    stats = {"recon": [1.0, 2.0], "latent-knn": [0.0, 1.0]}
    one = trial(tmp_path / "s0", 0, targets, {"recon": np.array([0.0, 1.0, 2.0, 3.0]), "latent-knn": np.zeros(4)}, stats)
    two = trial(tmp_path / "s1", 1, targets, {"recon": np.array([1.0, 1.0, 3.0, 3.0]), "latent-knn": np.ones(4)}, stats)
    fused = [read_scores(folder)[1]["fused"] for folder, _ in (one, two)]  # rebuilt from the members
    assert ensemble_scores(*zip(one, two), "fused")[1].tolist() == ((fused[0] + fused[1]) / 2).tolist()
    with pytest.raises(UserError, match="no validation statistics for them"):
        ensemble_scores(*zip(trial(tmp_path / "s2", 2, targets, {"recon": np.ones(4)}, {}), one), "recon")
    other = trial(tmp_path / "s3", 3, np.array([1, 0, 1, 0]), {"recon": np.ones(4)}, stats)
    with pytest.raises(UserError, match="test images differ"):
        ensemble_scores(*zip(one, other), "recon")
    broken = trial(tmp_path / "s8", 8, targets, {"recon": np.array([0.0, np.inf, 1.0, 2.0])}, stats)
    with pytest.raises(UserError, match="not all finite"):
        ensemble_scores(*zip(one, broken), "recon")
    normal_only = [trial(tmp_path / f"n{s}", s, np.zeros(4, dtype=int), {"recon": np.ones(4)}, stats) for s in (0, 1)]
    with pytest.raises(UserError, match="lacks anomalous or normal images"):
        ensemble_scores(*zip(*normal_only), "recon")
    assert ensemble_summary(tmp_path, {}, [], [0, 1], "fused") is None  # no classes: no row


def test_compare_with_ensemble_adds_a_row_per_network_run_of_several_seeds(data_dir, tmp_path):
    out = tmp_path / "runs"
    run_main(data_dir, out, "--model", "ae", "--classes", "0", "1", "--seeds", "0", "1", "--epochs", "1")
    run_main(data_dir, out, "--model", "knn", "--classes", "0", "1", "--seeds", "0", "1")
    text = main.run(["--compare", str(out), "--score", "fused", "--ensemble"])
    labels = [line.split("|")[1].strip().replace(" (classes 0 1 only)", "") for line in text.splitlines()
              if line.startswith("| ")]
    assert "ae, ensemble of seeds 0 1" in labels
    assert not any(label.startswith("knn, ensemble") for label in labels)  # a classical detector is not ensembled
    row = next(line for line in text.splitlines() if line.startswith("| ae (classes 0 1 only), ensemble"))
    assert "2 seeds averaged" in row and row.split("|")[5].strip() == "-"  # no F1 at a validation threshold
    assert "ensemble" not in main.run(["--compare", str(out), "--score", "fused"])  # only when asked
    for scores in (out / "digits" / "ae").glob("*/class*_seed1/scores.npz"):
        scores.unlink()  # a run kept without its per-image scores (results/README.md): its tables, no ensemble
    text = main.run(["--compare", str(out), "--score", "fused", "--ensemble"])
    assert "ae (classes 0 1 only) |" in text and "ensemble" not in text


def test_a_trial_folder_whose_results_name_another_trial_is_one_clear_error(data_dir, tmp_path):
    run_dir = run_main(data_dir, tmp_path / "runs", "--model", "knn", "--classes", "0", "--seeds", "0", "1")
    shutil.copytree(run_dir / "class0_seed0", run_dir / "class0_seed0.bak")  # a stray copy inside the run
    one_error(command("main.py", "--compare", tmp_path / "runs", "--ensemble"),
              "class0_seed0.bak/results.json holds the results of class 0, seed 0")
    shutil.rmtree(run_dir / "class0_seed0.bak")
    path = run_dir / "class0_seed1" / "results.json"
    path.write_text(path.read_text().replace('"seed": 1', '"seed": 0'))  # seeds swapped by hand
    one_error(command("main.py", "--table", run_dir), "but its folder is named class0_seed1")


def test_ensemble_without_compare_is_one_error():
    one_error(command("main.py", "--ensemble", "--dataset", "digits"), "--ensemble goes with --compare")


def test_trials_scored_before_the_statistics_were_kept_get_no_ensemble_row_and_no_error(tmp_path):
    targets = np.array([0, 0, 1, 1])
    results = {}
    for seed in (0, 1):
        _, results[(0, seed)] = trial(tmp_path / f"class0_seed{seed}", seed, targets, {"recon": np.arange(4.0)}, {})
    assert ensemble_summary(tmp_path, results, [0], [0, 1], "recon") is None


def test_compare_draws_each_runs_best_score_against_the_pixel_knn(data_dir, tmp_path, monkeypatch):
    """--compare --score all writes a row per score, but its figure (comparison-<dataset>.png) shows
    one row per run: the score the run recommends (tool/scores.py), beside the pixel kNN."""
    from tool.report import figures

    out = tmp_path / "runs"
    run_main(data_dir, out, "--model", "ae", "--classes", "0", "1", "--seeds", "0", "--epochs", "1")
    run_main(data_dir, out, "--model", "knn", "--classes", "0", "1", "--seeds", "0")
    drawn = []
    monkeypatch.setattr(figures, "comparison_figure", lambda per_class, *rest: drawn.append((list(per_class), rest)))
    main.run(["--compare", str(out), "--score", "all"])
    (labels, (_, title, path)), = drawn
    assert labels == ["ae [fused-lof] (classes 0 1 only)", "knn [knn] (classes 0 1 only)"]
    assert "each run's best score" in title and path == out / "comparison-digits.png"
