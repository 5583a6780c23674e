"""The two protocols: which images are normal, which are anomalies, and the validation hold-out.

    split_one_anomalous_class(ds, c)   the paper's: class c is the anomaly, every other class normal
    split_one_normal_class(ds, c)      Deep SVDD / MemAE: class c is normal, every other class an anomaly

Train and validation hold normal training images only; test is the whole test split with
target 1 = anomaly. Labels are used for nothing else.
"""
from dataclasses import dataclass, field

import numpy as np
import torch
from prettytable import PrettyTable

from tool.errors import UserError

PROTOCOLS = ("one-anomalous-class", "one-normal-class")


@dataclass
class Split:
    """Images of one (protocol, class, seed) trial. Targets: 1 = anomaly, 0 = normal."""
    protocol: str
    target_class: int
    train: torch.Tensor  # uint8, normal only
    val: torch.Tensor  # uint8, normal only (drives early stopping and the threshold)
    test: torch.Tensor  # uint8, the whole test split
    test_targets: torch.Tensor  # int64, 1 = anomaly
    counts: dict = field(default_factory=dict)

    def table(self):
        table = PrettyTable(["split", "normal", "anomalous", "total"])
        for split, (normal, anomalous) in self.counts.items():
            table.add_row([split, normal, anomalous, normal + anomalous])
        return table


def split_one_anomalous_class(ds, anomaly_class, val_fraction=0.1, seed=0):
    """The paper's protocol: class `anomaly_class` is the anomaly, the other classes are normal.

    Train and validation hold only normal training images (`val_fraction` of them, drawn with
    `seed`, go to validation); test is the whole test split with target 1 where the label is the
    anomaly class.
    """
    c = ds.class_index(anomaly_class)
    return _split(ds, ds.train_labels != c, ds.test_labels == c, "one-anomalous-class", c, val_fraction, seed)


def split_one_normal_class(ds, normal_class, val_fraction=0.1, seed=0):
    """The Deep SVDD / MemAE protocol: class `normal_class` is normal, every other class an anomaly."""
    c = ds.class_index(normal_class)
    return _split(ds, ds.train_labels == c, ds.test_labels != c, "one-normal-class", c, val_fraction, seed)


def make_split(ds, protocol, target_class, val_fraction=0.1, seed=0):
    if protocol == "one-anomalous-class":
        return split_one_anomalous_class(ds, target_class, val_fraction, seed)
    if protocol == "one-normal-class":
        return split_one_normal_class(ds, target_class, val_fraction, seed)
    raise UserError(f"unknown protocol '{protocol}'. Valid: {', '.join(PROTOCOLS)}")


def _split(ds, normal_train, test_targets, protocol, target_class, val_fraction, seed):
    train_idx, val_idx = validation_holdout(np.flatnonzero(normal_train.numpy()), val_fraction, seed, ds.name)
    n_val = len(val_idx)
    n_anomalous = int(test_targets.sum())
    counts = {"train": (len(train_idx), 0), "validation": (n_val, 0),
              "test": (len(test_targets) - n_anomalous, n_anomalous)}
    return Split(protocol, target_class, ds.train_images[torch.from_numpy(train_idx)],
                 ds.train_images[torch.from_numpy(val_idx)], ds.test_images, test_targets.long(), counts)


def validation_holdout(indices, val_fraction, seed, name="the images"):
    """(train, validation) indices: a `val_fraction` of `indices` drawn with `seed`, both sorted."""
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(indices)
    n_val = int(round(val_fraction * len(perm)))
    if n_val < 1 or len(perm) - n_val < 2:
        raise UserError(f"{name}: too few normal training images ({len(perm)}) for a train/validation split")
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
