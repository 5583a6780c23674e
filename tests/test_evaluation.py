"""Metrics on hand-made scores, the validation threshold, and tables built by key."""
import numpy as np
import pytest
import torch

from tool import evaluation, report
from tool.evaluation import compute_metrics, validation_threshold


def test_perfect_scores():
    m = compute_metrics([0.1, 0.2, 0.3, 0.9, 0.8], [0, 0, 0, 1, 1], threshold=0.5)
    assert m == {"auroc": 1.0, "auprc": 1.0, "f1_oracle": 1.0, "f1_val_threshold": 1.0}


def test_reversed_scores_are_not_flipped():
    m = compute_metrics([0.9, 0.8, 0.7, 0.1, 0.2], [0, 0, 0, 1, 1])
    assert m["auroc"] == 0.0  # below 0.5 is reported as it is


def test_ties_give_chance():
    targets = [0, 0, 0, 1]
    m = compute_metrics([1.0, 1.0, 1.0, 1.0], targets, threshold=0.5)
    assert m["auroc"] == 0.5
    assert m["auprc"] == pytest.approx(0.25)  # the prevalence
    assert m["f1_oracle"] == pytest.approx(2 * 0.25 / 1.25)  # everything flagged: P 0.25, R 1
    assert m["f1_val_threshold"] == pytest.approx(0.4)


def test_known_values():
    # pairs (anomaly, normal): 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3 of 4
    m = compute_metrics([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], threshold=0.5)
    assert m["auroc"] == pytest.approx(0.75)
    assert m["auprc"] == pytest.approx((1.0 + 2 / 3) / 2)  # precision 1 at recall .5, 2/3 at recall 1
    assert m["f1_oracle"] == pytest.approx(0.8)  # threshold 0.35: P 2/3, R 1
    assert m["f1_val_threshold"] == pytest.approx(2 / 3)  # only 0.8 flagged: P 1, R 0.5


def test_metrics_refuse_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="both"):
        compute_metrics([0.1, 0.2], [0, 0])


def test_validation_threshold_is_a_percentile_of_validation_scores():
    scores = np.arange(101, dtype=float)
    assert validation_threshold(scores, 95) == 95.0
    assert (scores > validation_threshold(scores, 95)).mean() == pytest.approx(5 / 101)


def test_anomaly_score_is_l2_norm_of_reconstruction_error():
    class Halve(torch.nn.Module):
        def forward(self, x):
            return {"recon": x / 2}

    x = torch.tensor([[[[3.0, 4.0]]], [[[0.0, 2.0]]]])  # (2, 1, 1, 2)
    assert evaluation.anomaly_scores(Halve(), x, batch_size=1).tolist() == [2.5, 1.0]


def _result(auroc):
    return {"metrics": {"auroc": auroc, "auprc": auroc / 2, "f1_oracle": 0.5, "f1_val_threshold": 0.4}}


def test_table_is_built_by_key_and_missing_runs_show_a_dash():
    results = {(0, 0): _result(0.9), (1, 0): _result(0.7), (0, 1): _result(0.8)}  # (1, 1) missing
    header, rows = report.table_rows(results, [0, 1], ["zero", "one"], [0, 1])
    assert header[:2] == ["class", "AUROC"]
    by_class = {row[0]: row for row in rows}
    assert by_class["0 zero"][1] == "85.00 ± 5.00"
    assert by_class["1 one"][1] == "70.00"  # one seed: no ± shown
    # the mean row uses only seeds with every class finished: seed 0 -> (0.9 + 0.7) / 2
    assert by_class["mean"][1] == "80.00"
    assert report.table_rows({}, [0, 1], ["zero", "one"], [0])[1][0][1] == "-"
    csv_text = report.table_csv(results, [0, 1], ["zero", "one"], [0, 1])
    assert csv_text.splitlines()[0].startswith("class,name,auroc_mean,auroc_std")
