"""Tests of tool/results.py: a trial's results.json and scores.npz written and read back, a
results.json written before several scores, and a damaged one: one clear error for every reader."""
import json

import numpy as np
import pytest

import main
import score
from conftest import command, copy_run, files_in, one_error
from tool import figures, report
from tool.errors import UserError
from tool.ensemble import ensemble_scores
from tool.evaluation import fusions
from tool.results import history_column, history_columns, read_results, read_scores, write_results


def test_results_and_scores_round_trip_with_scores_in_float16(tmp_path):
    results = {"class": 3, "seed": 1, "metrics": {"recon": dict.fromkeys(("auroc", "auprc", "f1_oracle",
                                                                           "f1_val_threshold"), 0.5)},
               "thresholds": {"recon": 1.25}, "history": [{"epoch": 1, "val_loss": 0.5}]}
    scores, small = np.array([0.1234567, 2.5, 70000.0]), np.array([0.1234567, 2.5, 1.0])
    write_results(tmp_path, results, [0, 1, 1], {"recon": small, "big": scores})
    assert read_results(tmp_path) == {**results, "history": {"epoch": [1], "val_loss": [0.5]}}
    targets, saved = read_scores(tmp_path)
    assert targets.tolist() == [0, 1, 1]
    assert saved["recon"].tolist() == small.astype(np.float16).astype(float).tolist()
    assert saved["big"][2] == 70000.0  # beyond float16's range: kept in float32


def test_a_results_json_written_before_several_scores_reads_as_its_one_score(tmp_path):
    metrics = dict.fromkeys(("auroc", "auprc", "f1_oracle", "f1_val_threshold"), 0.75)
    (tmp_path / "results.json").write_text(json.dumps({
        "class": 0, "seed": 0, "model": "knn", "metrics": metrics, "scores": [0.5, 1.5], "targets": [0, 1],
        "threshold": {"value": 1.0, "percentile_of_validation_scores": 95.0}}))
    results = read_results(tmp_path)
    assert results["metrics"] == {"knn": metrics} and results["thresholds"] == {"knn": 1.0}
    targets, saved = read_scores(tmp_path)
    assert targets.tolist() == [0, 1] and saved["knn"].tolist() == [0.5, 1.5]


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
            report.export(run_dir, tmp_path / "results")  # main.py --export, into tmp_path
        else:
            main.run([reader, str(run_dir)])
    assert str(error.value).startswith(f"{results} ")
    assert "Delete it and run the trial again" in str(error.value)
    assert files_in(tmp_path) == before  # nothing written, nothing half-written


def test_a_damaged_results_json_on_the_command_line(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    (run_dir / "class0_seed0" / "results.json").write_text("[]")
    one_error(command("main.py", "--table", run_dir), "results.json is not a trial's results")


def test_the_history_is_kept_by_columns_to_5_significant_digits_and_the_metrics_to_the_last_bit(tmp_path):
    metrics = dict.fromkeys(("auroc", "auprc", "f1_oracle", "f1_val_threshold"), 0.123456789012345)
    history = [{"epoch": 1, "val_loss": 0.0694992813409, "memory": [{"entropy": 2.701853524}, {"entropy": 1.0}]},
               {"epoch": 2, "val_loss": 0.05, "memory": [{"entropy": 2.5}, {"entropy": 1.25}], "seconds": 3.0}]
    results = {"class": 0, "seed": 0, "metrics": {"recon": metrics}, "thresholds": {"recon": 1.0}, "history": history}
    write_results(tmp_path, results, [0, 1], {"recon": [0.0, 1.0]})
    saved = read_results(tmp_path)
    assert saved["metrics"]["recon"] == metrics
    assert saved["history"] == {"epoch": [1, 2], "val_loss": [0.069499, 0.05],
                                "memory": [{"entropy": [2.7019, 2.5]}, {"entropy": [1.0, 1.25]}],
                                "seconds": [None, 3.0]}
    assert '\n    "val_loss": [0.069499,0.05],\n' in (tmp_path / "results.json").read_text()  # a line a quantity
    write_results(tmp_path, saved, [0, 1], {"recon": [0.0, 1.0]})  # written again as read: unchanged
    assert read_results(tmp_path)["history"] == saved["history"]


def test_a_history_written_is_read_back_whatever_its_keys_and_a_malformed_one_is_refused(tmp_path):
    results = {"class": 0, "seed": 0, "metrics": {"recon": dict.fromkeys(("auroc", "auprc", "f1_oracle",
                                                                          "f1_val_threshold"), 0.5)},
               "thresholds": {"recon": 1.0}, "history": [{"epoch": 1, 7: 1.5}]}  # a key that is no string
    write_results(tmp_path, results, [0, 1], {"recon": [0.0, 1.0]})
    assert read_results(tmp_path)["history"] == {"epoch": [1], "7": [1.5]}
    for history in ("abc", None, [5, {"epoch": 1}]):  # damaged or forged: one clear error, before any write
        (tmp_path / "results.json").write_text(json.dumps({**results, "history": history}))
        with pytest.raises(UserError, match="history or evaluations"):
            read_results(tmp_path)


def test_one_quantity_of_the_history_reads_from_either_layout():
    rows = [{"epoch": 1, "seconds": 2.0}, {"epoch": 2, "seconds": 3.0}]
    assert history_column(rows, "seconds") == history_column(history_columns(rows), "seconds") == [2.0, 3.0]


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
    exact = {name: values for name, values in fusions(fusion, members).items()} if fusion else {}
    metrics = dict.fromkeys(("auroc", "auprc", "f1_oracle", "f1_val_threshold"), 0.5)
    results = {"class": 0, "seed": 0, "metrics": {name: metrics for name in [*members, *exact]},
               "thresholds": dict.fromkeys([*members, *exact], 1.0), "fusion": fusion, "history": []}
    write_results(tmp_path, results, rng.integers(0, 2, 50), {**members, **exact})
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


def test_a_scores_npz_that_keeps_its_fused_scores_is_read_as_it_is(tmp_path):
    stats = {"recon": [5.0, 2.0], "latent-knn": [1.0, 0.25], "memory": [0.5, 0.125]}
    _fused_trial(tmp_path, stats)
    with np.load(tmp_path / "scores.npz") as data:
        arrays = {name: data[name] for name in data.files}
    np.savez(tmp_path / "scores.npz", **arrays, fused=np.full(50, 7.0, dtype=np.float16))  # written before
    assert read_scores(tmp_path)[1]["fused"].tolist() == [7.0] * 50


@pytest.mark.parametrize("damage", [{"memory": "spread"}, {"memory": [0.5, 0.0]}, {"memory": None}, "not a dict"])
def test_damaged_fusion_statistics_leave_the_fused_score_out_and_an_ensemble_says_so(tmp_path, damage):
    stats = {"recon": [5.0, 2.0], "latent-knn": [1.0, 0.25], "memory": [0.5, 0.125]}
    folders = [tmp_path / "class0_seed0", tmp_path / "class0_seed1"]
    for folder in folders:
        folder.mkdir()
        _fused_trial(folder, stats)
    results = json.loads((folders[1] / "results.json").read_text())
    results["fusion"] = {**stats, **damage} if isinstance(damage, dict) else damage
    (folders[1] / "results.json").write_text(json.dumps(results))
    assert "fused" in read_scores(folders[0])[1] and "fused" not in read_scores(folders[1])[1]
    with pytest.raises(UserError, match="has no fused scores; score it again"):
        ensemble_scores(folders, [read_results(f) for f in folders], "fused")
    with pytest.raises(UserError, match="has no fused scores of its test images .* score it again"):
        figures.trial_view(folders[1], read_results(folders[1]), "fused")


def test_a_fusion_without_its_statistics_is_stored(tmp_path):
    """A trial written without fusion statistics keeps the fused scores it was given: nothing to
    rebuild them from."""
    members = {"recon": np.arange(4.0), "latent-knn": np.arange(4.0), "memory": np.arange(4.0)}
    metrics = dict.fromkeys(("auroc", "auprc", "f1_oracle", "f1_val_threshold"), 0.5)
    write_results(tmp_path, {"class": 0, "seed": 0, "metrics": {"fused": metrics}, "thresholds": {"fused": 1.0},
                             "history": []}, [0, 1, 0, 1], {**members, "fused": np.arange(4.0) * 3})
    assert read_scores(tmp_path)[1]["fused"].tolist() == [0.0, 3.0, 6.0, 9.0]
