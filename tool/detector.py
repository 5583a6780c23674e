"""A detector for your own arrays of images, in the manner of scikit-learn and pyod.

    from sklearn.datasets import load_digits
    from tool.detector import CascadeMemoryDetector
    digits = load_digits()
    images = (digits.images * 255 / 16).astype("uint8")                # (N, 8, 8) uint8 pixels
    detector = CascadeMemoryDetector(epochs=20).fit(images[digits.target != 0])   # normal images only
    scores = detector.decision_function(images)    # higher = more anomalous
    flags = detector.predict(images)               # 1 = above the threshold fixed on held-out normal images
    detector.save("detector.pt"); detector = CascadeMemoryDetector.load("detector.pt")

Images: a numpy array or a torch tensor of N >= 1 images, (N, H, W) for one channel, (N, C, H, W),
or (N, H, W, C) where the channels are clearly last (C of 1 or 3 and the second axis not); pixels
as integers 0..255 (uint8 or any integer type, or a nested list) or as floats in [0, 1]. `fit` holds out VAL_FRACTION of them (drawn with the seed)
for early stopping and for the threshold (THRESHOLD_PERCENTILE of their scores), exactly as a
trial of main.py does with its normal training images, and trains and scores with the same
build_model / train_model / Scorer. After fit, as in pyod: `decision_scores_` (the scores of the
images fitted on), `threshold_`, `labels_` (1 where a fitted image's score is above it).

The score: by default the best one the results chose for the network (tool.scores.recommended:
fused-lof for a conv encoder, fused-hidden for an MLP one, fused-ssl with a self-supervised task);
score="recon" gives the paper's. Every other setting is main.py's constant of the same name in
lower case (epochs=20, top_k=[15, 5], ssl="transforms", ...), with main.py's default.
"""
import tempfile
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from models import PRESETS, ModelConfig, build_model
from tool.constants import main_defaults
from tool.data.datasets import scale_images
from tool.data.protocol import validation_holdout
from tool.errors import UserError, shown
from tool.io import atomic_torch_save, check_target, load_checkpoint
from tool.scores import FUSIONS, SCORES, Scorer, features_of, names_of, recommended
from tool.settings import check_model_size, check_ranges, resolve_device
from tool.seeding import seed_everything
from tool.train import TrainConfig, train_model

OWN = ("preset", "score", "seed", "device", "verbose")  # the detector's own parameters, beside main.py's settings


def _defaults():
    """main.py's defaults of the settings a detector has: the model's, training's, VAL_FRACTION and
    THRESHOLD_PERCENTILE (main.py's constants are the one home of every default)."""
    keys = [f.name for cls in (ModelConfig, TrainConfig) for f in fields(cls)] + ["val_fraction", "threshold_percentile"]
    defaults = main_defaults()
    return {key: defaults[key] for key in keys}


class CascadeMemoryDetector:
    """Fit on normal images, score any images (higher = more anomalous)."""

    def __init__(self, preset="cascade", score=None, seed=0, device="auto", verbose=False, **settings):
        defaults = _defaults()
        unknown = sorted(set(settings) - set(defaults))
        if unknown:
            raise UserError(f"unknown setting(s) {', '.join(unknown)}; valid are main.py's constants in lower case: "
                            f"{', '.join(sorted(defaults))}")
        if not isinstance(preset, str) or preset not in PRESETS:
            raise UserError(f"preset must be one of {', '.join(PRESETS)}; got {preset!r}")
        if score is not None and (not isinstance(score, str) or score not in [*SCORES, *FUSIONS]):
            raise UserError(f"score must be None (the recommended one) or one of {', '.join([*SCORES, *FUSIONS])}; "
                            f"got {score!r}")
        if not isinstance(device, str):
            raise UserError(f"device must be a string: auto, cpu, cuda, cuda:N or mps; got {device!r}")
        if type(seed) is not int:
            raise UserError(f"seed must be an integer; got {shown(seed)}")
        if not isinstance(verbose, bool):
            raise UserError(f"verbose must be True or False; got {shown(verbose)}")
        self.preset, self.score, self.seed, self.verbose, self.device_asked = preset, score, seed, verbose, device
        self.device = resolve_device(device)
        self.settings = {**defaults, **settings}
        if "epochs" in settings and "min_steps" not in settings:
            self.settings["min_steps"] = 0  # epochs asked for are honoured: MIN_STEPS is for the default EPOCHS
        check_ranges({**self.settings, "seeds": [seed]})
        self._build_check()
        self.model = self.scorer = self.input_shape = None
        self.decision_scores_ = self.labels_ = None

    # -- scikit-learn's estimator interface --------------------------------------------------------
    def get_params(self, deep=True):
        return {"preset": self.preset, "score": self.score, "seed": self.seed, "device": self.device_asked,
                "verbose": self.verbose, **self.settings}

    def set_params(self, **params):
        """New parameters, checked as the constructor checks them before any is taken (a refusal
        leaves the detector as it was); a fitted detector keeps its fit until fit is called again,
        as scikit-learn's estimators do."""
        checked = type(self)(**{**self.get_params(), **params})
        for name in ("preset", "score", "seed", "verbose", "device_asked", "device", "settings"):
            setattr(self, name, getattr(checked, name))
        return self

    def __repr__(self):
        defaults = _defaults()
        changed = {k: v for k, v in self.settings.items() if v != defaults[k]}
        shown = ", ".join(f"{k}={v!r}" for k, v in {"preset": self.preset, "score": self.score, **changed}.items())
        fitted = f"; fitted on {self.input_shape} images, score {self.score_name}" if self.model is not None else ""
        return f"CascadeMemoryDetector({shown}){fitted}"

    # -- fitting and scoring -----------------------------------------------------------------------
    def fit(self, images, y=None):
        """Train on `images`, all normal (y is ignored, as in pyod); returns self."""
        images = as_images(images)
        seed_everything(self.seed)
        train_idx, val_idx = validation_holdout(np.arange(len(images)), self.settings["val_fraction"], self.seed)
        train_x, val_x = (images[torch.from_numpy(i)] for i in (train_idx, val_idx))
        self.input_shape = tuple(images.shape[1:])
        try:  # the model at the images' size must fit in memory (as main.py checks before a sweep)
            check_model_size({**self.settings, "model": self.preset}, self.input_shape)
        except UserError as error:
            self.input_shape = None
            raise UserError(str(error).replace("--latent-dim, --n-slots, --memae-slots or --channels",
                                               "latent_dim, n_slots, memae_slots or channels")) from None
        self.model = self._build().to(self.device)
        with tempfile.TemporaryDirectory() as tmp:  # train_model's resumable checkpoint, not kept
            train_model(self.model, scale_images(train_x, self.device), scale_images(val_x, self.device),
                        TrainConfig.from_settings(self.settings), Path(tmp) / "last.pt", self.seed, desc="fit",
                        log=print if self.verbose else None, bar=self.verbose)
        self.scorer = Scorer.fit(self.model, train_x, val_x, self.seed, self.settings["threshold_percentile"])
        self._check_score()
        self.decision_scores_ = self.decision_function(images)
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(np.int64)
        return self

    def fit_predict(self, images, y=None):
        """fit(images), then the labels of those images (1 = above the threshold)."""
        return self.fit(images).labels_

    @property
    def score_name(self):
        """The score the detector gives: the one asked for, or the recommended one of its network."""
        return self.score or (recommended(self.scorer.names) if self.scorer is not None else None)

    @property
    def threshold_(self):
        """The decision threshold of the detector's score: THRESHOLD_PERCENTILE of the scores of the
        held-out normal images."""
        self._check_fitted()
        return self.scorer.thresholds[self.score_name]

    threshold = threshold_

    @property
    def thresholds(self):
        """{score: its decision threshold} of every score the detector has."""
        self._check_fitted()
        return dict(self.scorer.thresholds)

    def decision_function(self, images, score=None):
        """Anomaly scores (float64 numpy array, higher = more anomalous) of `score` (default: the
        detector's); the names the detector has are in `detector.scorer.names`."""
        self._check_fitted()
        score = self.score_name if score is None else score
        if not isinstance(score, str) or score not in self.scorer.names:
            raise UserError(f"score {score!r} is not one this detector has: {', '.join(self.scorer.names)}")
        images = as_images(images, self.input_shape)
        if tuple(images.shape[1:]) != self.input_shape:
            raise UserError(f"images of shape {tuple(images.shape[1:])}, but the detector was fitted on "
                            f"{self.input_shape} (C, H, W)")
        return self.scorer.scores(images, [score])[score]

    def predict(self, images):
        """1 where the score is above the threshold fixed on the held-out normal images, else 0."""
        return (self.decision_function(images) > self.threshold_).astype(np.int64)

    # -- files ---------------------------------------------------------------------------------------
    def save(self, path):
        """Everything the detector needs to score, in one file (torch.save; read back with load)."""
        self._check_fitted()
        if not isinstance(path, (str, Path)) or not str(path).strip():
            raise UserError(f"save needs a file name; got {path!r}")
        check_target(path)
        atomic_torch_save({"model": self.model.state_dict(), "preset": self.preset, "score": self.score,
                           "seed": self.seed, "settings": self.settings, "input_shape": list(self.input_shape),
                           "scorer": self.scorer.state()}, path)

    @classmethod
    def load(cls, path, device="auto"):
        """A detector saved by save(); a file that is not one, or is damaged, is a UserError naming it."""
        if not isinstance(path, (str, Path)) or not str(path).strip():
            raise UserError(f"load needs a file name; got {shown(path)}")
        saved = load_checkpoint(path, "cpu", "Give a file that CascadeMemoryDetector.save wrote.",
                                what="a detector saved by CascadeMemoryDetector.save")
        try:
            if not isinstance(saved, dict):
                raise ValueError("not a dict")
            detector = cls(saved["preset"], saved.get("score"), saved["seed"], device, **saved["settings"])
            shape = saved["input_shape"]
            if not (isinstance(shape, list) and len(shape) == 3 and all(type(s) is int and 1 <= s <= 65536 for s in shape)):
                raise ValueError(f"input_shape {shape!r}")
            detector.input_shape = tuple(shape)
            check_model_size({**detector.settings, "model": detector.preset}, detector.input_shape)  # before allocating
            detector.model = detector._build()
            detector.model.load_state_dict(saved["model"])
            if not all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point()):
                raise ValueError("weights that are not finite")
            detector.model.to(detector.device).eval()
            detector.scorer = Scorer.from_state(detector.model, saved["scorer"])
            lacking = sorted(set(names_of(features_of(detector.model))) - set(detector.scorer.names))
            if lacking:  # a detector file holds every score's bank and statistics
                raise ValueError(f"no bank or statistics for {', '.join(lacking)}")
            detector._check_score()
        except UserError as error:
            raise UserError(f"{path}: {error}") from None
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, OverflowError) as error:
            raise UserError(f"{path} is not a detector saved by CascadeMemoryDetector.save, or it is damaged "
                            f"({type(error).__name__}: {str(error)[:200]}).") from None
        return detector

    # -- checks --------------------------------------------------------------------------------------
    def _build(self):
        try:
            return build_model(self.preset, self.input_shape, ModelConfig.from_settings(self.settings))
        except ValueError as error:
            raise UserError(str(error)) from None

    def _build_check(self):
        """The settings fit together (checked on a small image of 1 x 28 x 28, on no device)."""
        with torch.device("meta"):
            try:
                build_model(self.preset, (1, 28, 28), ModelConfig.from_settings(self.settings))
            except ValueError as error:
                raise UserError(str(error)) from None

    def _check_score(self):
        if self.score is not None and self.score not in self.scorer.names:
            raise UserError(f"score '{self.score}' is not one a {self.preset} network has: "
                            f"{', '.join(self.scorer.names)}")

    def _check_fitted(self):
        if self.model is None:
            raise UserError("the detector is not fitted yet: call fit(normal_images) first.")


CHANNELS = (1, 3)  # the channel counts an (N, H, W, C) array is recognised by


def as_images(images, expected=None):
    """Images in any of the accepted forms (see the top of this file) as a tensor (N, C, H, W) of
    uint8 pixels, or floats 0..255 for float input, that scale_images maps to [-1, 1]; anything else
    is a UserError saying what is expected. `expected` (C, H, W), once fitted, settles which axis
    holds the channels."""
    accepted = ("images must be a numpy array or torch tensor of shape (N, C, H, W), (N, H, W) or (N, H, W, C), "
                "of pixels 0..255 (uint8) or floats in [0, 1]")
    if isinstance(images, torch.Tensor):
        if images.layout != torch.strided or images.is_meta:
            raise UserError(f"{accepted}; got a {'meta' if images.is_meta else 'sparse'} tensor (give a dense one)")
        images = images.detach().cpu()
        array = (images.float() if images.dtype in (torch.bfloat16, torch.float16) else images).numpy()
    elif isinstance(images, (np.ndarray, list, tuple)):
        try:
            array = np.asarray(images)
        except ValueError:  # a ragged list
            raise UserError(f"{accepted}; got a list of images of different shapes") from None
    else:
        raise UserError(f"{accepted}; got {type(images).__name__}")
    if array.dtype.kind not in "uif":
        raise UserError(f"{accepted}; got an array of {array.dtype}")
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))  # negative strides, big-endian
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4 or 0 in array.shape:
        raise UserError(f"{accepted}, with N, C, H and W at least 1; got shape {tuple(array.shape)}")
    n, a, b, c = array.shape
    if expected is not None:  # fitted: the channels are where the fitted shape says
        if (a, b, c) != tuple(expected) and (c, a, b) == tuple(expected):
            array = array.transpose(0, 3, 1, 2)
    elif c in CHANNELS and a not in CHANNELS:
        array = array.transpose(0, 3, 1, 2)  # (N, H, W, C)
    elif c in CHANNELS and a in CHANNELS and a != c:
        raise UserError(f"images of shape {tuple(array.shape)}: the channels may be on axis 1 or on axis 3; give "
                        f"them as (N, C, H, W)")
    if array.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(array))
    if array.dtype.kind in "iu":  # integer pixels (a list of ints, int64 arrays): 0..255 only
        if array.min() < 0 or array.max() > 255:
            raise UserError(f"{accepted}; got integers outside 0..255")
        return torch.from_numpy(np.ascontiguousarray(array.astype(np.uint8)))
    array = array.astype(np.float32)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise UserError(f"{accepted}; got floats outside [0, 1] (or not finite): scale them to [0, 1]")
    return torch.from_numpy(np.ascontiguousarray(array)) * 255.0
