"""A detector for your own arrays of images, in the style of scikit-learn and pyod.

    from tool.detector import CascadeMemoryDetector
    detector = CascadeMemoryDetector(preset="cascade", epochs=20, seed=0).fit(normal_images)
    scores = detector.decision_function(new_images)   # higher = more anomalous (SCORE; or score="fused", ...)
    flags = detector.predict(new_images)              # 1 = anomaly: score above the threshold
    detector.save("detector.pt"); detector = CascadeMemoryDetector.load("detector.pt")

Images are uint8 pixels (N, C, H, W) or (N, H, W), or floats in [0, 1], as numpy arrays or
tensors. `fit` holds out VAL_FRACTION of them (drawn with the seed) for early stopping and for the
threshold (THRESHOLD_PERCENTILE of their scores), exactly as a trial of main.py does with its
normal training images; it trains and scores with the same build_model / train_model /
latent_bank / image_scores, and keeps what its scores need (the latent-knn bank, the fusion
statistics, a threshold per score).
The other settings are main.py's model and training constants of the same name, in lower case
(epochs=20, top_k=[15, 5], lr=1e-3, val_fraction=0.1, ...), with main.py's defaults; verbose=True
prints a line per epoch.
"""
import tempfile
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from models import PRESETS, ModelConfig, build_model
from tool.datasets import scale_images
from tool.errors import UserError
from tool.evaluation import (FUSIONS, SCORES, fit_lof, fusion_stats, fusions, hidden_bank, image_scores,
                             latent_bank, validation_threshold)
from tool.io import atomic_torch_save, load_checkpoint
from tool.protocol import validation_holdout
from tool.settings import check_ranges, resolve_device
from tool.train import TrainConfig, seed_everything, train_model


def _defaults():
    """main.py's defaults of the settings a detector has: the model's, training's, VAL_FRACTION
    and THRESHOLD_PERCENTILE (main.py's constants are the one home of every default)."""
    from main import DEFAULTS

    keys = [f.name for cls in (ModelConfig, TrainConfig) for f in fields(cls)] + ["val_fraction", "threshold_percentile",
                                                                                  "score"]
    return {key: DEFAULTS[key] for key in keys}


class CascadeMemoryDetector:
    """Fit on normal images, score any images (higher = more anomalous)."""

    def __init__(self, preset="cascade", seed=0, device="auto", verbose=False, **settings):
        defaults = _defaults()
        unknown = sorted(set(settings) - set(defaults))
        if unknown:
            raise UserError(f"unknown setting(s) {', '.join(unknown)}; valid are main.py's constants in lower case: "
                            f"{', '.join(sorted(defaults))}")
        if preset not in PRESETS:
            raise UserError(f"unknown model preset '{preset}'. Valid: {', '.join(PRESETS)}")
        self.preset, self.seed, self.device, self.verbose = preset, seed, resolve_device(device), verbose
        self.settings = {**defaults, **settings}
        check_ranges({**self.settings, "seeds": [seed]})
        if self.settings["score"] not in SCORES:
            raise UserError(f"unknown score '{self.settings['score']}'. Valid: {', '.join(SCORES)}")
        self.model, self.input_shape, self.bank, self.fusion, self.thresholds = None, None, None, None, None
        self.hidden = None  # the hidden-knn bank (MLP encoders)
        self.lof = self.hidden_lof = None  # refitted from the banks (fit, load), never stored

    @property
    def threshold(self):
        """The decision threshold of the detector's score (SCORE): THRESHOLD_PERCENTILE of the
        scores of the held-out normal images."""
        return None if self.thresholds is None else self.thresholds[self.settings["score"]]

    def fit(self, images):
        """Train on `images`, all normal; returns self."""
        images = _as_images(images)
        seed_everything(self.seed)
        train_idx, val_idx = validation_holdout(np.arange(len(images)), self.settings["val_fraction"], self.seed)
        train_x, val_x = (scale_images(images[torch.from_numpy(i)], self.device) for i in (train_idx, val_idx))
        self.input_shape = tuple(images.shape[1:])
        self.model = self._build().to(self.device)
        with tempfile.TemporaryDirectory() as tmp:  # train_model's resumable checkpoint, not kept
            train_model(self.model, train_x, val_x, TrainConfig.from_settings(self.settings), Path(tmp) / "last.pt",
                        self.seed, desc="fit", log_every=1 if self.verbose else None)
        train_images = images[torch.from_numpy(train_idx)]
        self.bank = latent_bank(self.model, train_images, self.seed, self.device)
        self.hidden = hidden_bank(self.model, train_images, self.seed, self.device)
        self.lof, self.hidden_lof = fit_lof(self.bank), fit_lof(self.hidden)
        val_scores = self._scores(val_x)
        self.fusion = fusion_stats(val_scores)
        val_scores.update(fusions(self.fusion, val_scores))
        self.thresholds = {name: validation_threshold(values, self.settings["threshold_percentile"])
                           for name, values in val_scores.items()}
        return self

    def decision_function(self, images, score=None):
        """Anomaly scores (float64 numpy array, higher = more anomalous) of `score` (default: the
        detector's SCORE): recon, latent-knn, latent-lof, memory (models with a memory), fused,
        fused-lof; for an MLP encoder hidden-knn, hidden-lof, fused-hidden."""
        self._check_fitted()
        score = score or self.settings["score"]
        if score not in self.thresholds:
            raise UserError(f"unknown score '{score}' for this detector; it has {', '.join(self.thresholds)}")
        images = _as_images(images)
        if tuple(images.shape[1:]) != self.input_shape:
            raise UserError(f"images of shape {tuple(images.shape[1:])}, but the detector was fitted on "
                            f"{self.input_shape}")
        scores = self._scores(scale_images(images, self.device))
        if score in FUSIONS:
            scores.update(fusions(self.fusion, scores))
        return scores[score]

    def predict(self, images):
        """1 where the score is above the threshold fixed on the held-out normal images, else 0."""
        return (self.decision_function(images) > self.threshold).astype(np.int64)

    def save(self, path):
        self._check_fitted()
        atomic_torch_save({"model": self.model.state_dict(), "preset": self.preset, "seed": self.seed,
                           "settings": self.settings, "input_shape": list(self.input_shape), "bank": self.bank,
                           "hidden": self.hidden, "fusion": self.fusion, "thresholds": self.thresholds}, path)

    @classmethod
    def load(cls, path, device="auto"):
        saved = load_checkpoint(path, "cpu", "Give a file that CascadeMemoryDetector.save wrote.")
        try:
            detector = cls(saved["preset"], saved["seed"], device, **saved["settings"])
            detector.input_shape = tuple(saved["input_shape"])
            detector.model = detector._build()
            detector.model.load_state_dict(saved["model"])
            detector.bank = _checked_bank(saved["bank"], detector.settings["latent_dim"], "codes")
            hidden = saved.get("hidden")
            detector.hidden = None if hidden is None else _checked_bank(
                hidden, getattr(detector.model.encoder, "hidden_width", None), "hidden features")
            detector.lof, detector.hidden_lof = fit_lof(detector.bank), fit_lof(detector.hidden)
            detector.fusion = {name: [float(v) for v in pair] for name, pair in saved["fusion"].items()}
            detector.thresholds = {name: float(v) for name, v in saved["thresholds"].items()}
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as error:
            raise UserError(f"{path} is not a detector saved by CascadeMemoryDetector.save "
                            f"({type(error).__name__}).") from None
        detector.model.to(detector.device).eval()
        return detector

    def _scores(self, images):
        """{score: values} of every score but the fused ones, for scaled `images`."""
        return image_scores(self.model, images, self.bank, self.lof, self.hidden, self.hidden_lof)

    def _build(self):
        try:
            return build_model(self.preset, self.input_shape, ModelConfig.from_settings(self.settings))
        except ValueError as error:
            raise UserError(str(error)) from None

    def _check_fitted(self):
        if self.model is None:
            raise UserError("the detector is not fitted yet: call fit(normal_images) first.")


def _checked_bank(bank, width, what):
    """A saved bank as float32, refused (ValueError) unless it is at least 2 finite rows of `width`
    numbers: a damaged one would give NaN or meaningless scores."""
    bank = bank.float()
    if bank.ndim != 2 or len(bank) < 2 or not torch.isfinite(bank).all() or bank.shape[1] != width:
        raise ValueError(f"a damaged bank of {what}")
    return bank


def _as_images(images):
    """uint8 or [0, 1] float pixels -> a tensor (N, C, H, W) that scale_images maps to [-1, 1]."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or len(x) == 0:
        raise UserError(f"images must be an array (N, C, H, W) or (N, H, W) with N >= 1, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point() or not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise UserError("images must be uint8 pixels (0..255) or floats in [0, 1]")
    return x.float() * 255.0
