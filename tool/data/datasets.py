"""The datasets this code knows and the processed format every dataset is turned into.

Processed format (one for every dataset): ``datasets/<name>/processed/{train,test}.pt``, each a
dict ``{"images": uint8 (N, C, H, W), "labels": int64 (N,)}``, and ``meta.json`` (class names,
shape, counts per class, every raw file with its sha256). ``meta.json`` is written last: a
folder without it is not prepared. The three files are written into a hidden staging folder
beside ``processed/`` that replaces it only once all three are complete, so preparing again
(--force) on a full disk leaves the old dataset as it was. tool/data/prepare.py and tool/data/folder.py
write this format; every other module reads it through `load_dataset`.
"""
import functools
import hashlib
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tool.errors import UserError, shown
from tool.io import (REPO, WriteError, atomic_torch_save, atomic_write_json, load_checkpoint, make_dir, read_json,
                     write_reason)
from tool.locks import staging_dir

DATA_ROOT = REPO / "datasets"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a dataset name is a plain folder name, <= 100 chars


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    kind: str  # "idx" | "cifar" | "digits"
    classes: tuple
    shape: tuple  # (C, H, W)
    torchvision_class: str = ""  # used for --download
    system_dirs: tuple = ()  # where distributions install the raw files
    apt_package: str = ""


DATASETS = {
    "mnist": DatasetSpec("mnist", "MNIST", "idx", tuple(str(i) for i in range(10)), (1, 28, 28), "MNIST"),
    "fmnist": DatasetSpec(
        "fmnist", "Fashion-MNIST", "idx",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        (1, 28, 28), "FashionMNIST", ("/usr/share/datasets/fashion-mnist",), "dataset-fashion-mnist"),
    "kmnist": DatasetSpec("kmnist", "Kuzushiji-MNIST", "idx",
                          ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"), (1, 28, 28), "KMNIST"),
    "cifar10": DatasetSpec(
        "cifar10", "CIFAR-10", "cifar",
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        (3, 32, 32), "CIFAR10"),
    "digits": DatasetSpec("digits", "scikit-learn digits", "digits", tuple(str(i) for i in range(10)), (1, 8, 8)),
}


def processed_dir(name, root=None):
    return Path(root or DATA_ROOT) / name / "processed"


def raw_dir(name, root=None):
    return Path(root or DATA_ROOT) / name / "raw"


def is_prepared(name, root=None):
    folder = processed_dir(name, root)
    return all((folder / f).is_file() for f in ("train.pt", "test.pt", "meta.json"))


def check_dataset_name(name, root=None):
    """A known dataset, or a folder dataset someone prepared under datasets/<name>/."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise UserError(f"--dataset {shown(name)} is not a dataset name but a path, an empty name or one over 100 "
                        f"characters: give the name of a dataset in {Path(root or DATA_ROOT)} (e.g. digits, fmnist, "
                        f"or your folder dataset's --name), and --data-dir for another datasets folder.")
    if name in DATASETS or is_prepared(name, root):
        return name
    raise UserError(f"unknown dataset {shown(name)}. Valid: {', '.join(DATASETS)} "
                    f"(or the name of a folder dataset prepared with preprocess.py --dataset folder)")


def stratified_mask(labels, n_classes, fraction, rng):
    """A boolean mask marking round(fraction * n_c) of the n_c members of every class c, drawn with
    the numpy Generator `rng` class by class in index order."""
    labels = np.asarray(labels)
    mask = np.zeros(len(labels), dtype=bool)
    for c in range(n_classes):
        members = np.flatnonzero(labels == c)
        mask[rng.choice(members, size=int(round(fraction * len(members))), replace=False)] = True
    return mask


# ---------------------------------------------------------------------------------------------
# Pixel scaling: the one place it happens (x / 255, then (x - 0.5) / 0.5, so [-1, 1]).
# ---------------------------------------------------------------------------------------------
def scale_images(images, device=None):
    """uint8 (N, C, H, W) -> float32 in [-1, 1] on `device`, as the paper scales pixels."""
    x = images.to(device=device, dtype=torch.float32)
    return x.div_(255.0).sub_(0.5).div_(0.5)


# ---------------------------------------------------------------------------------------------
# Writing and reading the processed format
# ---------------------------------------------------------------------------------------------
def make_meta(name, title, classes, splits, sources, **extra):
    return {
        "name": name,
        "title": title,
        "classes": list(classes),
        "shape": list(splits["train"][0].shape[1:]),
        "splits": {split: {"count": len(labels),
                           "per_class": [int((labels == c).sum()) for c in range(len(classes))]}
                   for split, (images, labels) in splits.items()},
        "pixel_scaling": "x / 255, then (x - 0.5) / 0.5 (applied when loading, tool.data.datasets.scale_images)",
        "sources": sources,
        **extra,
    }


def _ours(meta_path):
    """Whether `meta_path` is a meta.json this code wrote (its processed/ may be replaced)."""
    try:
        meta = read_json(meta_path, "") if meta_path.is_file() and not meta_path.is_symlink() else None
    except UserError:
        return False
    return isinstance(meta, dict) and "pixel_scaling" in meta and "splits" in meta


def write_processed(name, splits, meta, root=None):
    """Write train.pt, test.pt and meta.json (last: it marks completion) into a hidden staging
    folder beside processed/, then put it in processed/'s place: a failure (a full disk) removes
    the staging folder and the folders it created, and leaves a dataset prepared before exactly as
    it was."""
    folder = processed_dir(name, root)
    foreign = sorted(p.name for p in folder.iterdir() if not (p.suffix in (".pt", ".json") and p.is_file()
                                                              and not p.is_symlink())) if folder.is_dir() else []
    if folder.is_dir() and not foreign and any(folder.iterdir()) and not _ours(folder / "meta.json"):
        foreign = sorted(p.name for p in folder.iterdir())  # .pt files of another tool (torchvision's MNIST/processed)
    if foreign or (folder.exists() and not folder.is_dir()) or folder.is_symlink():
        raise UserError(f"{folder} holds what is not a prepared dataset ({', '.join(foreign[:3]) or 'not a folder'}"
                        f"{', ...' if len(foreign) > 3 else ''}), and preparing {name} replaces that folder as a "
                        f"whole: move your files out of it (images to prepare are read from --path, which must "
                        f"not lie inside it), or choose another --name or --data-dir.")
    created = [p for p in (folder.parent, *folder.parent.parents) if not p.exists()]  # removed again on a failure
    staging = None
    try:
        make_dir(folder.parent)
        staging = staging_dir(folder.parent, "processed")
        for split, (images, labels) in splits.items():
            atomic_torch_save({"images": images.contiguous(), "labels": labels.contiguous()},
                              staging / f"{split}.pt")
        atomic_write_json(staging / "meta.json", meta)
        _swap_in(staging, folder)
    except (WriteError, OSError) as error:
        reason, fix = (error.reason, error.fix) if isinstance(error, WriteError) else write_reason(error)
        raise UserError(f"cannot write {folder} ({reason}): {fix}; nothing in it was changed.") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if not folder.exists():  # a failure: no empty folder is left behind
            for parent in created:
                try:
                    parent.rmdir()
                except OSError:
                    break  # not empty (another dataset), or not ours to remove


def _swap_in(staging, folder):
    """Put the complete folder `staging` in `folder`'s place: the old folder is renamed aside, the
    new one renamed in, then the old one removed (two renames: no copy, no space needed)."""
    if not folder.exists():
        staging.rename(folder)
        return
    old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".processed.old.", suffix=".tmp"))
    try:
        folder.rename(old / "processed")
        try:
            staging.rename(folder)
        except BaseException:
            (old / "processed").rename(folder)  # put the old one back
            raise
    except BaseException:
        if not any(old.iterdir()):
            old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)


@dataclass
class Dataset:
    name: str
    classes: list
    train_images: torch.Tensor  # uint8 (N, C, H, W)
    train_labels: torch.Tensor  # int64 (N,)
    test_images: torch.Tensor
    test_labels: torch.Tensor
    meta: dict = field(default_factory=dict)

    @property
    def shape(self):
        return tuple(self.train_images.shape[1:])

    @functools.cached_property
    def sha256(self):
        """The sha256 of the images and labels of both splits: a run's trials record it, and a
        dataset prepared again with other images or settings is not mixed into their run."""
        digest = hashlib.sha256()
        for tensor in (self.train_images, self.train_labels, self.test_images, self.test_labels):
            digest.update(tensor.contiguous().view(torch.uint8).numpy())
        return digest.hexdigest()

    def class_index(self, value):
        """A class given by index (int or digit string) or by name -> its index; else a UserError."""
        if isinstance(value, str) and value in self.classes and not value.lstrip("-").isdigit():
            return self.classes.index(value)
        try:
            index = int(value)
            if isinstance(value, bool) or index != value and not isinstance(value, str):
                raise ValueError(value)
        except (TypeError, ValueError):
            raise UserError(f"class '{value}' is not a class of {self.name}: valid are 0..{len(self.classes) - 1} "
                            f"or a name of {self.classes}") from None
        if not 0 <= index < len(self.classes):
            raise UserError(f"class {index} is outside {self.name}'s classes: valid are 0..{len(self.classes) - 1} "
                            f"({', '.join(self.classes)})")
        return index

    def class_list(self, classes):
        """`classes` (indices or names; None = all) as sorted, distinct indices."""
        classes = range(len(self.classes)) if classes is None else classes
        return sorted(dict.fromkeys(self.class_index(c) for c in classes))


def load_dataset(name, root=None):
    """Load a prepared dataset. A missing dataset names the command that prepares it."""
    check_dataset_name(name, root)
    folder = processed_dir(name, root)
    where = "" if root is None else f" --data-dir {root}"  # the advice prepares the folder that was read
    if not is_prepared(name, root):
        raise UserError(f"dataset '{name}' is not prepared (nothing complete in {folder}). "
                        f"Run: python preprocess.py --dataset {name}{where}")
    again = (f"Prepare it again: python preprocess.py --dataset {name} --force{where}" if name in DATASETS else
             f"Prepare it again: python preprocess.py --dataset folder --path DIR --name {name} --force{where}")
    meta = read_json(folder / "meta.json", again)
    if not (isinstance(meta, dict) and isinstance(meta.get("classes"), list) and meta["classes"]):
        raise UserError(f"{folder / 'meta.json'} is corrupt: it names no classes. {again}")
    classes = [str(c) for c in meta["classes"]]
    parts = {split: load_checkpoint(folder / f"{split}.pt", "cpu", again, what="a dataset file this code wrote")
             for split in ("train", "test")}
    try:
        tensors = [parts[s][k] for s in ("train", "test") for k in ("images", "labels")]
    except (KeyError, TypeError, IndexError) as error:
        raise UserError(f"{folder} is corrupt: a split lacks its images or labels ({type(error).__name__}). "
                        f"{again}") from None
    for images, labels in (tensors[:2], tensors[2:]):
        if not (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)
                and images.dtype == torch.uint8 and images.ndim == 4
                and labels.dtype == torch.int64 and labels.ndim == 1 and len(images) == len(labels)
                and (len(labels) == 0 or 0 <= int(labels.min()) <= int(labels.max()) < len(classes))):
            raise UserError(f"{folder} holds tensors of the wrong format. {again}")
    if tensors[0].shape[1:] != tensors[2].shape[1:]:
        raise UserError(f"{folder}: its training images are {tuple(tensors[0].shape[1:])} and its test images "
                        f"{tuple(tensors[2].shape[1:])}; a dataset's images are all of one size. {again}")
    return Dataset(name, classes, *tensors, meta=meta)


def class_label(index, name):
    """A class as tables name it: "2 Pullover", or "2" alone where the name is the index (digits)."""
    name = str(name).strip()
    return str(index) if name in ("", str(index)) else f"{index} {name}"
