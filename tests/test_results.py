"""Tests of tool/results.py: a trial's results.json and scores.npz written and read back, checked
once against RESULTS_SCHEMA when read, and a damaged one: one clear error for every reader."""
import json

import numpy as np
import pytest

import main
import score
from conftest import command, copy_run, files_in, one_error
from tool.report.export import export
from tool.errors import UserError
from tool.report.ensemble import ensemble_scores
from tool.results import history_columns, read_results, read_scores, write_results
from tool.scores import fusions

METRICS = dict.fromkeys(("auroc", "auprc", "f1_oracle", "f1_val_threshold"), 0.5)


def trial(**fields):
    """The smallest results.json every reader accepts, with `fields`."""
    return {"class": 0, "seed": 0, "metrics": {"recon": METRICS}, "thresholds": {"recon": 1.0},
            "threshold_percentile": 95.0, "validation_stats": {"recon": [0.5, 0.25]}, "history": {}, **fields}


def test_results_and_scores_round_trip_with_scores_in_float16(tmp_path):
    results = trial(**{"class": 3, "seed": 1, "history": [{"epoch": 1, "val_loss": 0.5}]})
    scores, small = np.array([0.1234567, 2.5, 70000.0]), np.array([0.1234567, 2.5, 1.0])
    write_results(tmp_path, results, [0, 1, 1], {"recon": small, "big": scores})
    assert read_results(tmp_path) == {**results, "history": {"epoch": [1], "val_loss": [0.5]}}
    targets, saved = read_scores(tmp_path)
    assert targets.tolist() == [0, 1, 1]
    assert saved["recon"].tolist() == small.astype(np.float16).astype(float).tolist()
    assert saved["big"][2] == 70000.0  # beyond float16's range: kept in float32


SCHEMA_DAMAGES = {  # what a hostile tester put into results.json, and what the one error names
    "threshold null": ({"thresholds": {"recon": None}}, "thresholds"),
    "threshold 10**400": ({"thresholds": {"recon": 10 ** 400}}, "thresholds"),
    "threshold NaN": ({"thresholds": {"recon": float("nan")}}, "thresholds"),
    "a score without threshold": ({"thresholds": {}}, "none for recon"),
    "fusion missing": ({"validation_stats": None}, "validation_stats"),
    "fusion a string": ({"validation_stats": "x"}, "validation_stats"),
    "fusion spread 0": ({"validation_stats": {"recon": [0.5, 0.0]}}, "validation_stats"),
    "fusion of 3": ({"validation_stats": {"recon": [0.5, 1.0, 2.0]}}, "validation_stats"),
    "no percentile": ({"threshold_percentile": None}, "threshold_percentile"),
    "AUROC 10**400": ({"metrics": {"recon": {**METRICS, "auroc": 10 ** 400}}}, "metrics"),
    "AUROC -5": ({"metrics": {"recon": {**METRICS, "auroc": -5}}}, "metrics"),
    "AUROC 1e999": ({"metrics": {"recon": {**METRICS, "auroc": float("inf")}}}, "metrics"),
    "AUROC NaN": ({"metrics": {"recon": {**METRICS, "auroc": float("nan")}}}, "metrics"),
    "AUROC true": ({"metrics": {"recon": {**METRICS, "auroc": True}}}, "metrics"),
    "class true": ({"class": True}, "class"),
    "seed -1": ({"seed": -1}, "seed"),
}


@pytest.mark.parametrize("damage", SCHEMA_DAMAGES)
def test_a_results_json_readers_would_trip_over_is_refused_once_where_it_is_read(tmp_path, damage):
    fields, named = SCHEMA_DAMAGES[damage]
    results = trial(**fields)
    if fields.get("validation_stats", "") is None or fields.get("threshold_percentile", "") is None:
        results = {k: v for k, v in results.items() if v is not None}
    (tmp_path / "results.json").write_text(json.dumps(results))  # NaN and Infinity as Python writes them
    with pytest.raises(UserError, match=f"is not a trial's results: .*{named}"):
        read_results(tmp_path)


DAMAGES = {"truncated": lambda text: text[:100], "a list": lambda text: "[]",
           "no metrics": lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "metrics"})}
READERS = ["--table", "--eval-only", "--resume", "--figures", "--export", "--compare", "score.py"]


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("reader", READERS)
def test_a_damaged_results_json_is_one_clear_error_for_every_reader(finished_run, tmp_path, reader, damage):
    run_dir = copy_run(finished_run, tmp_path / "runs")
    results = run_dir / "class0_seed0" / "results.json"
    results.write_text(DAMAGES[damage](results.read_text()))
    before = files_in(tmp_path)
    with pytest.raises(UserError) as error:
        if reader == "score.py":
            score.run(["--checkpoint", str(run_dir / "class0_seed0"), str(tmp_path), "--device", "cpu"])
        elif reader == "--export":
            export(run_dir, tmp_path / "results")  # main.py --export, into tmp_path
        else:
            main.run([reader, str(run_dir)])
    assert str(error.value).startswith(f"{results} ")
    assert "Delete it and run the trial again" in str(error.value)
    assert files_in(tmp_path) == before  # nothing written, nothing half-written


def test_a_damaged_results_json_on_the_command_line(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    (run_dir / "class0_seed0" / "results.json").write_text("[]")
    one_error(command("main.py", "--table", run_dir), "results.json is not a trial's results")


def test_the_history_is_kept_by_columns_to_4_significant_digits_and_the_metrics_to_the_last_bit(tmp_path):
    metrics = dict.fromkeys(("auroc", "auprc", "f1_oracle", "f1_val_threshold"), 0.123456789012345)
    history = [{"epoch": 1, "val_loss": 0.0694992813409, "memory": [{"entropy": 2.701853524}, {"entropy": 1.0}]},
               {"epoch": 2, "val_loss": 0.05, "memory": [{"entropy": 2.5}, {"entropy": 1.25}], "seconds": 3.14159}]
    write_results(tmp_path, trial(metrics={"recon": metrics}, history=history), [0, 1], {"recon": [0.0, 1.0]})
    saved = read_results(tmp_path)
    assert saved["metrics"]["recon"] == metrics
    assert saved["history"] == {"epoch": [1, 2], "val_loss": [0.0695, 0.05],
                                "memory": [{"entropy": [2.7, 2.5]}, {"entropy": [1.0, 1.25]}],
                                "seconds": [None, 3.14]}
    assert '\n    "val_loss": [0.0695,0.05],\n' in (tmp_path / "results.json").read_text()  # a line a quantity
    write_results(tmp_path, saved, [0, 1], {"recon": [0.0, 1.0]})  # written again as read: unchanged
    assert read_results(tmp_path)["history"] == saved["history"]
    assert history_columns([{"epoch": 1, 7: 1.5}]) == {"epoch": [1], 7: [1.5]}


@pytest.mark.parametrize("arrays", [
    {"targets": np.array([0, 1]), "recon": np.ones((2, 2))},       # not one score per image
    {"targets": np.array([0, 1]), "recon": np.array(1.0)},         # a scalar
    {"targets": np.array([0, 1]), "recon": np.array(["a", "b"])},  # not numbers
    {"targets": np.array([[0, 1]]), "recon": np.ones((1, 2))},     # 2-D targets
    {"targets": np.array([0, 7]), "recon": np.ones(2)},            # targets that are not 0 / 1
])
def test_scores_of_the_wrong_shape_or_type_are_one_clear_error(tmp_path, arrays):
    np.savez(tmp_path / "scores.npz", **arrays)
    with pytest.raises(UserError, match="holds no readable test scores"):
        read_scores(tmp_path)


def _fused_trial(tmp_path, fusion):
    """A trial folder written with recon, latent-knn, memory and their fusion, under `fusion` stats."""
    rng = np.random.default_rng(0)
    members = {"recon": rng.normal(5, 2, 50), "latent-knn": rng.normal(1, 0.3, 50), "memory": rng.normal(0.5, 0.1, 50)}
    exact = fusions(fusion, members)
    names = [*members, *exact]
    write_results(tmp_path, trial(metrics=dict.fromkeys(names, METRICS), thresholds=dict.fromkeys(names, 1.0),
                                  validation_stats=fusion), rng.integers(0, 2, 50), {**members, **exact})
    return members, exact


def test_fused_scores_are_not_stored_but_rebuilt_from_their_members(tmp_path):
    stats = {"recon": [5.0, 2.0], "latent-knn": [1.0, 0.25], "memory": [0.5, 0.125]}
    members, exact = _fused_trial(tmp_path, stats)
    with np.load(tmp_path / "scores.npz") as data:
        assert sorted(data.files) == ["latent-knn", "memory", "recon", "targets"]  # no fused array
    _, saved = read_scores(tmp_path)
    assert set(saved) == {"recon", "latent-knn", "memory", "fused"}  # fused-lof needs latent-lof: not made
    stored = {m: members[m].astype(np.float16).astype(float) for m in members}
    assert saved["fused"].tolist() == fusions(stats, stored)["fused"].tolist()  # from the float16 members
    assert np.abs(saved["fused"] - exact["fused"]).max() < 0.01  # and close to the full-precision sum


def test_an_ensemble_of_a_score_without_statistics_says_to_score_again(tmp_path):
    stats = {"recon": [5.0, 2.0], "latent-knn": [1.0, 0.25], "memory": [0.5, 0.125]}
    folders = [tmp_path / "class0_seed0", tmp_path / "class0_seed1"]
    for folder in folders:
        folder.mkdir()
        _fused_trial(folder, stats)
    results = json.loads((folders[1] / "results.json").read_text())
    results["validation_stats"] = {k: v for k, v in stats.items() if k != "memory"}
    (folders[1] / "results.json").write_text(json.dumps(results))
    with pytest.raises(UserError, match="no validation statistics for them; score it again"):
        ensemble_scores(folders, [read_results(f) for f in folders], "memory")
