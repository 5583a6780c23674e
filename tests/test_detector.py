"""Tests of tool/detector.py: the detector is a trial of main.py; the pyod and scikit-learn
contract; the input forms it takes; save / load; bad input and damaged files."""
import numpy as np
import pytest
import torch

import main
from conftest import results_of
from tool.data.datasets import load_dataset
from tool.detector import CascadeMemoryDetector, as_images
from tool.errors import UserError
from tool.evaluation import compute_metrics
from tool.scores import FUSIONS, fusions

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
        yield CascadeMemoryDetector(score="recon", seed=0, **SETTINGS).fit(ds.train_images[ds.train_labels != 0].numpy())
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
    stored.update(fusions(trial["validation_stats"], stored))  # and rebuilds the fused ones from them
    for name in fitted.thresholds:
        scores = fitted.decision_function(ds.test_images, score=name)
        assert stored[name].tolist() == trial["test_scores"][name]
        assert fitted.thresholds[name] == trial["thresholds"][name]
        assert compute_metrics(scores, ds.test_labels == 0)["auroc"] == trial["metrics"][name]["auroc"]
    assert fitted.threshold_ == trial["thresholds"]["recon"]  # the detector's score
    recon = fitted.decision_function(ds.test_images)
    assert fitted.predict(ds.test_images).tolist() == (recon > fitted.threshold_).astype(int).tolist()


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


def test_the_pyod_contract(digits, fitted):
    """After fit: decision_scores_ (the fitted images' scores), threshold_ and labels_; fit_predict;
    get_params / set_params as scikit-learn's clone uses them; a readable repr; the recommended
    score by default."""
    from sklearn.base import clone

    _, ds = digits
    images = ds.train_images[ds.train_labels != 0].numpy()
    assert fitted.decision_scores_.shape == (len(images),)
    assert (fitted.decision_scores_ == fitted.decision_function(images)).all()
    assert (fitted.labels_ == (fitted.decision_scores_ > fitted.threshold_)).all() and fitted.labels_.dtype == np.int64
    assert 0.02 < fitted.labels_.mean() < 0.2  # about 5% of normal images above the 95th percentile
    params = fitted.get_params()
    assert params["score"] == "recon" and params["epochs"] == 3 and params["preset"] == "cascade"
    copy = clone(fitted)
    assert copy.get_params() == params and copy.model is None
    assert copy.set_params(epochs=2).settings["epochs"] == 2 and fitted.settings["epochs"] == 3
    shown = repr(fitted)
    assert shown.startswith("CascadeMemoryDetector(preset='cascade', score='recon', epochs=3") and "fitted on" in shown
    assert CascadeMemoryDetector().score_name is None and repr(CascadeMemoryDetector()) == \
        "CascadeMemoryDetector(preset='cascade', score=None)"
    best = CascadeMemoryDetector(seed=0, **SETTINGS)
    assert (best.fit_predict(images[:200]) == best.labels_).all() and best.score_name == "fused-lof"


def test_every_accepted_form_of_images_is_the_same_pixels(fitted):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 1, 8, 8), dtype=np.uint8)
    expected = fitted.decision_function(pixels)
    forms = {
        "(N, H, W)": pixels[:, 0],
        "(N, H, W, C)": pixels.transpose(0, 2, 3, 1),
        "floats in [0, 1]": pixels / 255.0,
        "negative strides": pixels[::-1][::-1],
        "big-endian floats": (pixels / 255.0).astype(">f8"),
        "a tensor that requires grad": torch.from_numpy(pixels / 255.0).float().requires_grad_(),
        "a list": pixels.tolist(),
    }
    for name, images in forms.items():
        assert np.allclose(fitted.decision_function(images), expected, rtol=1e-5), name
    assert as_images(np.zeros((2, 16, 16, 3), np.uint8)).shape == (2, 3, 16, 16)  # channels clearly last
    assert as_images(np.zeros((2, 3, 16, 16), np.uint8)).shape == (2, 3, 16, 16)


@pytest.mark.parametrize("images, message", [
    (None, "got NoneType"), ("images", "got str"), ([[1, 2], [3]], "different shapes"),
    (np.array([object(), object()]), "got an array of object"), (np.zeros((2, 0, 8, 8), np.uint8), "at least 1"),
    (np.zeros((0, 1, 8, 8), np.uint8), "at least 1"), (np.zeros((2, 8), np.uint8), "got shape"),
    (np.zeros((2, 3, 8, 1), np.uint8), "axis 1 or on axis 3"), (np.full((2, 8, 8), 2.0), "floats in \\[0, 1\\]"),
    (np.full((2, 8, 8), np.nan), "not finite"), (np.full((2, 8, 8), 300), "integers outside 0..255"),
    (np.zeros((2, 8, 8), bool), "got an array of bool"),
])
def test_images_that_are_not_images_are_one_clear_error(images, message):
    with pytest.raises(UserError, match=message):
        as_images(images)


@pytest.mark.parametrize("call, message", [
    (lambda: CascadeMemoryDetector(epoch=3), "unknown setting"),
    (lambda: CascadeMemoryDetector(preset="nope"), "preset must be one of"),
    (lambda: CascadeMemoryDetector(preset=["ae"]), "preset must be one of"),
    (lambda: CascadeMemoryDetector(lr=float("nan")), "--lr"),
    (lambda: CascadeMemoryDetector(score="nope"), "score must be None"),
    (lambda: CascadeMemoryDetector(score=""), "score must be None"),
    (lambda: CascadeMemoryDetector(score=0), "score must be None"),
    (lambda: CascadeMemoryDetector(score=["recon"]), "score must be None"),
    (lambda: CascadeMemoryDetector(device=None), "device must be a string"),
    (lambda: CascadeMemoryDetector(seed="0"), "seed must be an integer"),
    (lambda: CascadeMemoryDetector(top_k=[15]), "one value per memory stage"),
    (lambda: CascadeMemoryDetector().decision_function(np.zeros((2, 8, 8), np.uint8)), "not fitted"),
    (lambda: CascadeMemoryDetector().save("x.pt"), "not fitted"),
    (lambda: CascadeMemoryDetector(preset="cascade", score="hidden-knn", **SETTINGS).fit(
        np.zeros((40, 8, 8), np.uint8)), "not one a cascade network has"),
])
def test_bad_use_is_a_clear_error(call, message):
    with pytest.raises(UserError, match=message):
        call()


def test_a_score_the_detector_lacks_and_a_bad_path_are_clear_errors(fitted, tmp_path):
    for score in ("hidden-knn", "", 0, ["recon"]):
        with pytest.raises(UserError, match="not one this detector has"):
            fitted.decision_function(np.zeros((2, 8, 8), np.uint8), score=score)
    for path in (None, "", tmp_path):
        with pytest.raises(UserError):
            fitted.save(path)
    assert list(tmp_path.iterdir()) == []


def test_nan_weights_in_a_saved_file_are_refused_at_load(fitted, tmp_path):
    fitted.save(tmp_path / "detector.pt")
    saved = torch.load(tmp_path / "detector.pt", weights_only=True)
    next(v for v in saved["model"].values() if v.is_floating_point()).fill_(float("nan"))
    torch.save(saved, tmp_path / "nan.pt")
    with pytest.raises(UserError, match="nan.pt .*not finite"):
        CascadeMemoryDetector.load(tmp_path / "nan.pt")


def test_images_of_another_shape_are_refused(fitted):
    with pytest.raises(UserError, match="fitted on"):
        fitted.decision_function(np.zeros((2, 1, 9, 9), np.uint8))


def test_loading_a_forged_file_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"model": _Forged(marker)}, tmp_path / "forged.pt")
    with pytest.raises(UserError, match="forged.pt is not a detector saved by CascadeMemoryDetector.save"):
        CascadeMemoryDetector.load(tmp_path / "forged.pt")
    assert not marker.exists()


@pytest.mark.parametrize("damage", [
    lambda s: s["scorer"]["banks"]["code"].__setitem__((0, 0), float("nan")),
    lambda s: s["scorer"]["banks"].__setitem__("code", torch.full((4, 128), 1e30)),
    lambda s: s["scorer"]["thresholds"].__setitem__("recon", float("nan")),
    lambda s: s["scorer"]["thresholds"].__setitem__("recon", float("inf")),
    lambda s: s["scorer"]["validation_stats"].__setitem__("recon", [0.0, 0.0]),
    lambda s: s["scorer"]["validation_stats"].__setitem__("recon", [1.0, 2.0, 3.0]),
    lambda s: s["scorer"].__setitem__("validation_stats", {}),
    lambda s: s.__setitem__("input_shape", [1, -8, 8]),
    lambda s: s["settings"].__setitem__("a_future_setting", 1),
    lambda s: s.clear(),
], ids=["nan bank", "huge bank", "nan threshold", "inf threshold", "zero spread", "three numbers", "no statistics",
        "negative shape", "future setting", "empty"])
def test_a_saved_detector_that_is_damaged_is_refused_naming_the_file(fitted, tmp_path, damage):
    fitted.save(tmp_path / "detector.pt")
    saved = torch.load(tmp_path / "detector.pt", weights_only=True)
    damage(saved)
    torch.save(saved, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="bad.pt"):
        loaded = CascadeMemoryDetector.load(tmp_path / "bad.pt")
        loaded.decision_function(np.zeros((2, 8, 8), np.uint8), score="fused-lof")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(UserError, match="tensor.pt is not a detector"):
        CascadeMemoryDetector.load(tmp_path / "tensor.pt")


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
    assert detector.score_name == "fused-hidden"  # the MLP encoder's best score
    detector.save(tmp_path / "mlp.pt")
    loaded = CascadeMemoryDetector.load(tmp_path / "mlp.pt", device="cpu")
    for name in ("hidden-knn", "hidden-lof", "fused-hidden"):
        assert (loaded.decision_function(ds.test_images, name) == detector.decision_function(ds.test_images, name)).all()
    saved = torch.load(tmp_path / "mlp.pt", weights_only=True)
    hidden = saved["scorer"]["banks"]["hidden"]
    for damaged in (hidden[:, :5], hidden.index_fill(0, torch.tensor([0]), float("nan"))):
        saved["scorer"]["banks"]["hidden"] = damaged
        torch.save(saved, tmp_path / "bad.pt")
        with pytest.raises(UserError, match="bad.pt.*hidden bank"):
            CascadeMemoryDetector.load(tmp_path / "bad.pt")


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch):
    """The Python example of the README, as it stands there, in a fresh folder."""
    import re

    from conftest import REPO

    readme = (REPO / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert "CascadeMemoryDetector" in example
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO))
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert len(namespace["scores"]) == len(namespace["images"]) == 1797 and (tmp_path / "detector.pt").is_file()
    assert namespace["detector"].score_name == "fused-lof" and set(np.unique(namespace["flags"])) <= {0, 1}


@pytest.mark.parametrize("ssl, k", [("transforms", 4), ("transforms-flips", 8)])
def test_a_detector_with_the_self_supervised_task_recommends_fused_ssl_and_keeps_its_banks(digits, tmp_path, ssl, k):
    """ssl="transforms" (the README's model): its best score is fused-ssl, and the four rotation
    banks the views scores compare with (eight with the mirror images) survive save and load, to
    the same scores."""
    _, ds = digits
    normal = ds.train_images[ds.train_labels != 0].numpy()[:300]
    detector = CascadeMemoryDetector(ssl=ssl, seed=0, **SETTINGS).fit(normal)
    assert detector.score_name == "fused-ssl" and "ssl=" in repr(detector)
    assert detector.scorer.banks["views"].shape[0] == k
    detector.save(tmp_path / "ssl.pt")
    loaded = CascadeMemoryDetector.load(tmp_path / "ssl.pt", device="cpu")
    assert loaded.scorer.banks["views"].shape[0] == k
    for name in ("transform", "views-knn", "views-lof", "csi", "fused-ssl"):
        assert (loaded.decision_function(ds.test_images, name) == detector.decision_function(ds.test_images, name)).all()
    assert detector.decision_scores_.shape == (len(normal),) and set(np.unique(detector.labels_)) <= {0, 1}
