"""Tests of tool/classical.py: knn, iforest and ocsvm score clear outliers higher, repeatably."""
import numpy as np
import pytest

from tool import classical
from tool.evaluation import compute_metrics


def fit_and_score(name, train, evaluate, seed):
    detect = classical.fit_detector(name, train, seed)
    return [detect(x) for x in evaluate]

DETECTORS = ["knn", "iforest", "ocsvm"]


@pytest.fixture(scope="module")
def points():
    """(train, normal, outliers): 16-d points near 0 (standard normal; 300 training points, more than
    the 256 each tree of iforest draws) and 10 points at 8 in every coordinate (~32 from the normal
    cloud, whose radius is ~4)."""
    rng = np.random.default_rng(0)
    return rng.normal(0, 1, (300, 16)), rng.normal(0, 1, (40, 16)), rng.normal(8, 1, (10, 16))


@pytest.mark.parametrize("name", DETECTORS)
def test_clear_outliers_score_higher(points, name):
    train, normal, outliers = points
    scores = fit_and_score(name, train, [normal, outliers], seed=0)
    assert len(scores) == 2  # one score array per input, in order
    assert [s.shape for s in scores] == [(40,), (10,)]
    assert all(np.isfinite(s).all() for s in scores)
    targets = [0] * len(normal) + [1] * len(outliers)
    assert compute_metrics(np.concatenate(scores), targets)["auroc"] > 0.9
    assert scores[1].min() > scores[0].max()  # here every outlier is above every normal point


@pytest.mark.parametrize("name, max_train", [("knn", None), ("iforest", None), ("ocsvm", None), ("ocsvm", 100)],
                         ids=["knn", "iforest", "ocsvm", "ocsvm-subset"])
def test_same_seed_same_scores(points, name, max_train, monkeypatch):
    """ocsvm-subset: more training points than OCSVM_MAX_TRAIN, so a subset is drawn with the seed."""
    if max_train is not None:
        monkeypatch.setattr(classical, "OCSVM_MAX_TRAIN", max_train)
    train, normal, outliers = points
    first = fit_and_score(name, train, [normal, outliers], seed=3)
    again = fit_and_score(name, train, [normal, outliers], seed=3)
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("name", ["iforest", "ocsvm"])
def test_the_seed_draws_the_forest_and_the_svm_subset(points, name, monkeypatch):
    """iforest's trees and ocsvm's training subset (more points than OCSVM_MAX_TRAIN) come from the seed."""
    monkeypatch.setattr(classical, "OCSVM_MAX_TRAIN", 100)
    train, normal, _ = points
    seed_0, seed_1 = (fit_and_score(name, train, [normal], seed=s)[0] for s in (0, 1))
    assert not np.array_equal(seed_0, seed_1)


def test_unknown_detector_raises():
    with pytest.raises(ValueError, match="unknown classical detector 'lof'; valid: knn, iforest, ocsvm"):
        fit_and_score("lof", np.zeros((10, 4)), [np.zeros((2, 4))], seed=0)


def test_a_classical_detector_has_the_shape_of_a_networks_scorer(data_dir):
    """fitted like Scorer.fit: one score named after it, its validation statistics and threshold."""
    from tool.data.datasets import load_dataset
    from tool.data.protocol import make_split

    split = make_split(load_dataset("digits", data_dir), "one-anomalous-class", 0, 0.1, 0)
    scorer = classical.ClassicalScorer.fit("knn", split.train, split.val, 0, 95.0)
    val = scorer.scores(split.val)["knn"]
    assert scorer.names == ["knn"] and scorer.thresholds == {"knn": float(np.percentile(val, 95.0))}
    assert scorer.val_stats == {"knn": [float(val.mean()), float(val.std())]} and scorer.percentile == 95.0
    test = scorer.scores(split.test)["knn"]
    assert test.shape == (len(split.test),) and compute_metrics(test, split.test_targets)["auroc"] > 0.9
