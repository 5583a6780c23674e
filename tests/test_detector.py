"""Tests of tool/detector.py: the detector is a trial of main.py; save / load, bad input."""
import numpy as np
import pytest
import torch

import main
from tool.datasets import load_dataset
from tool.detector import CascadeMemoryDetector
from conftest import results_of
from tool.errors import UserError
from tool.evaluation import FUSIONS, compute_metrics, fusions

SETTINGS = {"epochs": 3, "patience": 3, "min_steps": 0}


@pytest.fixture(scope="module")
def digits(data_dir):
    return data_dir, load_dataset("digits", data_dir)


@pytest.fixture(scope="module")
def fitted(digits):
    """Fitted with one torch thread, as main.py's trials run (float sums depend on the count)."""
    _, ds = digits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield CascadeMemoryDetector(seed=0, **SETTINGS).fit(ds.train_images[ds.train_labels != 0].numpy())
    finally:
        torch.set_num_threads(threads)


def test_the_detector_is_a_trial_of_main(digits, fitted, tmp_path):
    """Fitted on a trial's normal training images (validation drawn alike), it gives that trial's
    threshold and test scores: the same functions, no second training loop."""
    root, ds = digits
    run_dir = main.run(["--data-dir", str(root), "--output-dir", str(tmp_path), "--classes", "0", "--seeds", "0",
                        "--epochs", "3", "--patience", "3", "--min-steps", "0", "--jobs", "1", "--draw-figures", "false"])
    trial = results_of(run_dir)["class0_seed0"]
    assert set(fitted.thresholds) == set(trial["metrics"]) == {"recon", "latent-knn", "latent-lof", "memory",
                                                                 "fused", "fused-lof"}
    stored = {name: fitted.decision_function(ds.test_images, score=name).astype(np.float16).astype(float)
              for name in fitted.thresholds if name not in FUSIONS}  # scores.npz keeps float16
    stored.update(fusions(trial["fusion"], stored))  # and rebuilds the fused ones from them
    for name in fitted.thresholds:
        scores = fitted.decision_function(ds.test_images, score=name)
        assert stored[name].tolist() == trial["test_scores"][name]
        assert fitted.thresholds[name] == trial["thresholds"][name]
        assert compute_metrics(scores, ds.test_labels == 0)["auroc"] == trial["metrics"][name]["auroc"]
    assert fitted.threshold == trial["thresholds"]["recon"]  # main.py's SCORE
    recon = fitted.decision_function(ds.test_images)
    assert fitted.predict(ds.test_images).tolist() == (recon > fitted.threshold).astype(int).tolist()


def test_save_and_load_give_the_same_scores(digits, fitted, tmp_path):
    _, ds = digits
    fitted.save(tmp_path / "detector.pt")
    loaded = CascadeMemoryDetector.load(tmp_path / "detector.pt", device="cpu")
    for name in ("recon", "latent-lof", "fused", "fused-lof"):
        assert (loaded.decision_function(ds.test_images, name) == fitted.decision_function(ds.test_images, name)).all()
    assert loaded.thresholds == fitted.thresholds and loaded.settings == fitted.settings
    floats = ds.test_images.numpy()[:, 0] / 255.0  # (N, H, W) floats in [0, 1] read as the same pixels
    assert np.allclose(loaded.decision_function(floats), fitted.decision_function(ds.test_images), rtol=1e-5)


class _Forged:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("call, message", [
    (lambda: CascadeMemoryDetector(epoch=3), "unknown setting"),
    (lambda: CascadeMemoryDetector(preset="nope"), "unknown model preset"),
    (lambda: CascadeMemoryDetector(lr=float("nan")), "--lr"),
    (lambda: CascadeMemoryDetector(score="nope"), "unknown score 'nope'"),
    (lambda: CascadeMemoryDetector().decision_function(np.zeros((2, 8, 8), np.uint8)), "not fitted"),
    (lambda: CascadeMemoryDetector().fit(np.full((40, 8, 8), 2.0)), "floats in \\[0, 1\\]"),
    (lambda: CascadeMemoryDetector().fit(np.zeros((40, 8), np.uint8)), "must be an array"),
])
def test_bad_use_is_a_clear_error(call, message):
    with pytest.raises(UserError, match=message):
        call()


def test_images_of_another_shape_are_refused(fitted):
    with pytest.raises(UserError, match="fitted on"):
        fitted.decision_function(np.zeros((2, 1, 9, 9), np.uint8))


def test_loading_a_forged_file_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"model": _Forged(marker)}, tmp_path / "forged.pt")
    with pytest.raises(UserError, match="forged.pt is not a checkpoint this code wrote"):
        CascadeMemoryDetector.load(tmp_path / "forged.pt")
    assert not marker.exists()


def test_a_saved_detector_with_a_damaged_bank_is_refused(fitted, tmp_path):
    fitted.save(tmp_path / "detector.pt")
    saved = torch.load(tmp_path / "detector.pt", weights_only=True)
    saved["bank"][0, 0] = float("nan")
    torch.save(saved, tmp_path / "nan.pt")
    with pytest.raises(UserError, match="nan.pt is not a detector saved by CascadeMemoryDetector.save"):
        CascadeMemoryDetector.load(tmp_path / "nan.pt")


def test_an_mlp_detector_keeps_its_hidden_bank_through_save_and_load(digits, tmp_path):
    _, ds = digits
    images = ds.train_images[ds.train_labels != 0].numpy()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        detector = CascadeMemoryDetector(preset="cascade-mlp", seed=0, **SETTINGS).fit(images)
    finally:
        torch.set_num_threads(threads)
    assert {"hidden-knn", "hidden-lof", "fused-hidden"} <= set(detector.thresholds)
    detector.save(tmp_path / "mlp.pt")
    loaded = CascadeMemoryDetector.load(tmp_path / "mlp.pt", device="cpu")
    for name in ("hidden-knn", "hidden-lof", "fused-hidden"):
        assert (loaded.decision_function(ds.test_images, name) == detector.decision_function(ds.test_images, name)).all()
    saved = torch.load(tmp_path / "mlp.pt", weights_only=True)
    for damaged in (saved["hidden"][:, :5], saved["hidden"].index_fill(0, torch.tensor([0]), float("nan"))):
        torch.save({**saved, "hidden": damaged}, tmp_path / "bad.pt")
        with pytest.raises(UserError, match="bad.pt is not a detector saved by CascadeMemoryDetector.save"):
            CascadeMemoryDetector.load(tmp_path / "bad.pt")
