"""Tests of tool/evaluation.py: the metrics and the validation threshold."""
import numpy as np
import pytest

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
