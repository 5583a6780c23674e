"""Shared fixtures: the repository on sys.path, and tiny synthetic datasets in the processed format."""
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `pytest` run without `python -m` still imports main, tool, models
    sys.path.insert(0, str(REPO))


def model_config(**overrides):
    """main.py's model settings (its defaults, the paper's), with `overrides`."""
    from main import DEFAULTS
    from models import ModelConfig

    return ModelConfig.from_settings(DEFAULTS, **overrides)


def train_config(**overrides):
    """main.py's training settings, with `overrides`."""
    from main import DEFAULTS
    from tool.train import TrainConfig

    return TrainConfig.from_settings(DEFAULTS, **overrides)


@pytest.fixture
def repo():
    """The repository root (cwd for command-line tests)."""
    return REPO


def synthetic_splits(n_train_per_class=20, n_test_per_class=5, n_classes=10, shape=(1, 8, 8), seed=0):
    """{"train": (images, labels), "test": (...)}: random uint8 images, labels 0, 1, ..., 0, 1, ..."""
    generator = torch.Generator().manual_seed(seed)
    splits = {}
    for split, per_class in (("train", n_train_per_class), ("test", n_test_per_class)):
        labels = torch.arange(n_classes).repeat(per_class)
        images = torch.randint(0, 256, (len(labels), *shape), generator=generator, dtype=torch.uint8)
        splits[split] = (images, labels)
    return splits


@pytest.fixture
def make_prepared():
    """A factory: make_prepared(root, name="tiny", **synthetic_splits kwargs) writes a prepared dataset
    under root/<name>/processed/ (loadable with tool.datasets.load_dataset) and returns its name."""
    from tool.datasets import make_meta, write_processed

    def make(root, name="tiny", **kwargs):
        splits = synthetic_splits(**kwargs)
        classes = [f"class{c}" for c in range(kwargs.get("n_classes", 10))]
        write_processed(name, splits, make_meta(name, name, classes, splits, [{"synthetic": True}]), root)
        return name

    return make
