"""The two protocols: which images are normal, which are anomalies, and the validation hold-out.

    split_one_anomalous_class(ds, c)   the paper's: class c is the anomaly, every other class normal
    split_one_normal_class(ds, c)      Deep SVDD / MemAE: class c is normal, every other class an anomaly

Train and validation hold normal training images only; test is the whole test split with
target 1 = anomaly. Labels are used for nothing else, and for `check_trials`: before a sweep
creates anything, every planned trial's split is counted from the labels alone.
"""
import math
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
    about: str = ""  # the dataset, the class and the seed, in words

    def describe(self):
        """The trial in words, and how many normal and anomalous images each split holds."""
        return f"{self.about}\n{self.table()}"

    def table(self):
        table = PrettyTable(["split", "normal", "anomalous", "total"])
        for split, (normal, anomalous) in self.counts.items():
            table.add_row([split, normal, anomalous, normal + anomalous])
        return table


def _is_normal(protocol, labels, c):
    return labels != c if protocol == "one-anomalous-class" else labels == c


def check_trials(ds, protocol, classes, val_fraction):
    """Check from the labels alone (no image is touched, nothing is trained) that every class of
    `classes` makes a trial: normal training images enough for the validation hold-out at
    `val_fraction`, and a test split with both normal and anomalous images (the metrics need both).
    A UserError names the first class that does not and says what to do."""
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol '{protocol}'. Valid: {', '.join(PROTOCOLS)}")
    n_train = {c: int(_is_normal(protocol, ds.train_labels, c).sum()) for c in classes}
    for c in classes:
        name = f"class {c} ({ds.classes[c]}) of {ds.name}, --protocol {protocol}"
        normal_test = int(_is_normal(protocol, ds.test_labels, c).sum())
        anomalous_test = len(ds.test_labels) - normal_test
        if not normal_test or not anomalous_test:
            which, other = ("anomalous", "normal") if not anomalous_test else ("normal", "anomalous")
            # the missing images are of other classes when (anomalies missing) == (one-normal-class)
            add = "other classes than" if (which == "anomalous") == (protocol == "one-normal-class") else "class"
            raise UserError(f"{name}: the test split holds no {which} image (its {len(ds.test_labels)} test images "
                            f"are all {other}), and the metrics need both. Add test images of {add} "
                            f"{ds.classes[c]}, or choose other --classes or another --protocol.")
        if n_train[c] == 0:
            holds = "only images of this class" if protocol == "one-anomalous-class" else "no image of this class"
            raise UserError(f"{name}: no normal training image (the training split holds {holds}). Choose other "
                            f"--classes or another --protocol.")
        _check_holdout(n_train[c], val_fraction, name, min(n_train.values()))


def _holdout_size(n, val_fraction):
    """Images of `n` held out for validation at `val_fraction`."""
    return int(round(val_fraction * n))


def _check_holdout(n, val_fraction, name, n_smallest=None):
    """The hold-out of `n` normal training images at `val_fraction` keeps >= 1 for validation and
    >= 2 for training (BatchNorm trains on batches of two or more); else a UserError naming
    --val-fraction and the values that work (for the smallest class, `n_smallest`)."""
    n_val = _holdout_size(n, val_fraction)
    if n_val >= 1 and n - n_val >= 2:
        return
    n_smallest = n if n_smallest is None else n_smallest
    # round(f * n) >= 1 and <= n - 2 (round: half to even) holds for f in (0.5 / n, (n - 1.5) / n)
    low = math.floor(5e3 / n_smallest) / 1e4 + 1e-4
    high = math.ceil(1e4 * (n_smallest - 1.5) / n_smallest) / 1e4 - 1e-4
    works = (f"a value in [{low:.4g}, {high:.4g}] works for every planned class (e.g. 0.1)" if low <= high else
             f"no value works for a class of {n_smallest} normal training image(s): a split needs at least 3")
    raise UserError(f"{name}: --val-fraction (VAL_FRACTION) {val_fraction:g} holds out {n_val} of its {n} normal "
                    f"training images for validation and leaves {n - n_val} for training, but validation needs at "
                    f"least 1 and training at least 2; {works}.")


def split_one_anomalous_class(ds, anomaly_class, val_fraction=0.1, seed=0):
    """The paper's protocol: class `anomaly_class` is the anomaly, the other classes are normal.

    Train and validation hold only normal training images (`val_fraction` of them, drawn with
    `seed`, go to validation); test is the whole test split with target 1 where the label is the
    anomaly class.
    """
    c = ds.class_index(anomaly_class)
    return _split(ds, _is_normal("one-anomalous-class", ds.train_labels, c), ds.test_labels == c,
                  "one-anomalous-class", c, val_fraction, seed)


def split_one_normal_class(ds, normal_class, val_fraction=0.1, seed=0):
    """The Deep SVDD / MemAE protocol: class `normal_class` is normal, every other class an anomaly."""
    c = ds.class_index(normal_class)
    return _split(ds, _is_normal("one-normal-class", ds.train_labels, c), ds.test_labels != c,
                  "one-normal-class", c, val_fraction, seed)


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
    about = f"{ds.name} {protocol}: class {target_class} ({ds.classes[target_class]}), seed {seed}"
    return Split(protocol, target_class, ds.train_images[torch.from_numpy(train_idx)],
                 ds.train_images[torch.from_numpy(val_idx)], ds.test_images, test_targets.long(), counts, about)


def validation_holdout(indices, val_fraction, seed, name="the images"):
    """(train, validation) indices: a `val_fraction` of `indices` drawn with `seed`, both sorted."""
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction (VAL_FRACTION) must lie in (0, 1), got {val_fraction}")
    _check_holdout(len(indices), val_fraction, name)
    perm = np.random.default_rng(seed).permutation(indices)
    n_val = _holdout_size(len(perm), val_fraction)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
