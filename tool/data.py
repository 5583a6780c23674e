"""Datasets: raw files -> processed tensors, loading, pixel scaling, and the two protocols.

Processed format (one for every dataset): ``datasets/<name>/processed/{train,test}.pt``, each a
dict ``{"images": uint8 (N, C, H, W), "labels": int64 (N,)}``, and ``meta.json`` (class names,
shapes, counts per class, every raw file with its sha256).

Raw files are looked for, in this order:
1. ``datasets/<name>/raw/`` (files as their home sites ship them: IDX or gzipped IDX, the
   CIFAR-10 python pickle batches or their tarball);
2. known system locations (the Debian package ``dataset-fashion-mnist``);
3. with ``download=True``, torchvision's dataset classes download them into ``raw/``;
``digits`` comes from scikit-learn's ``load_digits`` and needs nothing.
"""
import gzip
import hashlib
import json
import math
import pickle
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from prettytable import PrettyTable

from tool.errors import UserError
from tool.io import REPO, atomic_torch_save, atomic_write_json

DATA_ROOT = REPO / "datasets"

IDX_FILES = {  # split -> (images file, labels file), the names MNIST-style sites ship
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


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
    if name in DATASETS or is_prepared(name, root):
        return name
    raise UserError(f"unknown dataset '{name}'. Valid: {', '.join(DATASETS)} "
                    f"(or the name of a folder dataset prepared with preprocess.py --dataset folder)")


# ---------------------------------------------------------------------------------------------
# Pixel scaling: the one place it happens (paper: x / 255, then (x - 0.5) / 0.5, so [-1, 1]).
# ---------------------------------------------------------------------------------------------
def scale_images(images, device=None):
    """uint8 (N, C, H, W) -> float32 in [-1, 1] on `device`, as the paper scales pixels."""
    x = images.to(device=device, dtype=torch.float32)
    return x.div_(255.0).sub_(0.5).div_(0.5)


# ---------------------------------------------------------------------------------------------
# Reading raw files
# ---------------------------------------------------------------------------------------------
def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_bytes(path):
    """A raw file's bytes, gunzipped when it is gzipped; a corrupt archive is a UserError."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        return data
    except (OSError, EOFError, zlib.error) as error:
        raise UserError(f"{path}: cannot be read ({error}). The file is truncated or corrupt: "
                        f"delete it and fetch it again.") from None


def _check_idx(path, data, magic, ndim):
    """Validate an IDX header and length, naming the file on any mismatch."""
    if len(data) < 4 + 4 * ndim:
        raise UserError(f"{path}: only {len(data)} bytes, too short for an IDX header: truncated or corrupt.")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise UserError(f"{path}: wrong IDX magic number {found:#010x} (expected {magic:#010x}, "
                        f"{'images' if ndim == 3 else 'labels'}): not the file its name says.")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + math.prod(dims)  # exact: np.prod would wrap around on a garbage header
    if len(data) != expected:
        raise UserError(f"{path}: {len(data)} bytes but its header {dims} needs {expected}: "
                        f"truncated or corrupt.")
    return dims


def read_idx_pair(images_path, labels_path, n_classes):
    """IDX images + labels (plain or gzipped) -> uint8 (N, 1, H, W), int64 (N,).

    The header and length are checked here so that every mistake names its file; the parsing
    itself is torchvision's (the reader its MNIST classes use).
    """
    from torchvision.datasets.mnist import read_image_file, read_label_file

    with tempfile.TemporaryDirectory() as tmp:
        tensors = []
        for path, magic, ndim, reader in ((images_path, 0x803, 3, read_image_file),
                                          (labels_path, 0x801, 1, read_label_file)):
            data = _read_bytes(path)
            _check_idx(path, data, magic, ndim)
            plain = Path(tmp) / Path(path).name.removesuffix(".gz")
            plain.write_bytes(data)
            tensors.append(reader(str(plain)))
    images, labels = tensors
    if len(images) != len(labels):
        raise UserError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
                        f"labels: the two files do not belong together.")
    if len(labels) and int(labels.max()) >= n_classes:
        raise UserError(f"{labels_path}: label {int(labels.max())} outside 0..{n_classes - 1}.")
    return images.unsqueeze(1).contiguous(), labels.long()


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 batch (a dict of numpy arrays, lists and strings) and nothing else.

    A plain pickle.load runs whatever code a damaged or forged file names; this one only builds
    the numpy arrays a batch holds (pickled by any numpy version and pickle protocol).
    """
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batches(paths):
    """CIFAR-10 python pickle batches -> uint8 (N, 3, 32, 32), int64 (N,).

    Each row of a batch's 'data' holds the 1024 red, then green, then blue values of one image,
    row-major, so a reshape to (3, 32, 32) gives the channels in RGB order.
    """
    images, labels = [], []
    for path in paths:
        try:
            with open(path, "rb") as f:
                batch = _CifarUnpickler(f, encoding="latin1").load()
            data = np.asarray(batch["data"])
            batch_labels = np.asarray(batch["labels"])
            if data.dtype != np.uint8 or not np.issubdtype(batch_labels.dtype, np.integer):
                raise TypeError(f"data of type {data.dtype}, labels of type {batch_labels.dtype}")
            batch_labels = batch_labels.astype(np.int64)
        except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError,
                AttributeError, IndexError, ImportError, MemoryError, OverflowError) as error:
            raise UserError(f"{path}: not a readable CIFAR-10 python batch ({type(error).__name__}: {error}). "
                            f"The file is truncated or corrupt: delete it and fetch it again.") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise UserError(f"{path}: images of shape {data.shape}, expected (N, 3072).")
        if batch_labels.ndim != 1 or len(data) != len(batch_labels):
            raise UserError(f"{path}: {len(data)} images but labels of shape {batch_labels.shape}.")
        if len(batch_labels) and (batch_labels.min() < 0 or batch_labels.max() > 9):
            raise UserError(f"{path}: labels outside 0..9.")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


# ---------------------------------------------------------------------------------------------
# Finding raw files
# ---------------------------------------------------------------------------------------------
def _find_file(folder, name):
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _idx_sources(folder):
    """{split: (images, labels)} when `folder` holds all four IDX files, else None."""
    found = {split: tuple(_find_file(folder, n) for n in names) for split, names in IDX_FILES.items()}
    return found if all(all(pair) for pair in found.values()) else None


def _has_cifar_batches(folder):
    return all((folder / n).is_file() for names in CIFAR_FILES.values() for n in names)


def _cifar_folder(folder, workdir):
    """The folder holding the CIFAR-10 batches: raw/, raw/cifar-10-batches-py/, or the tarball."""
    for candidate in (folder, folder / "cifar-10-batches-py"):
        if _has_cifar_batches(candidate):
            return candidate
    tarball = folder / "cifar-10-python.tar.gz"
    try:
        with tarfile.open(tarball) as archive:
            archive.extractall(workdir, filter="data")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise UserError(f"{tarball}: cannot be extracted ({error}): truncated or corrupt.") from None
    extracted = Path(workdir) / "cifar-10-batches-py"
    if not _has_cifar_batches(extracted):
        raise UserError(f"{tarball}: does not hold the cifar-10-batches-py files.")
    return extracted


def _has_raw(spec, folder):
    if not folder.is_dir():
        return False
    if spec.kind == "idx":
        return _idx_sources(folder) is not None
    return (_has_cifar_batches(folder) or _has_cifar_batches(folder / "cifar-10-batches-py")
            or (folder / "cifar-10-python.tar.gz").is_file())


def search_locations(spec, root=None, system_dirs=None):
    """Folders searched for raw files, in order."""
    dirs = spec.system_dirs if system_dirs is None else system_dirs
    return [raw_dir(spec.name, root)] + [Path(d) for d in dirs]


def find_raw(spec, root=None, system_dirs=None):
    """The first searched folder holding the dataset's raw files, or None."""
    for folder in search_locations(spec, root, system_dirs):
        if _has_raw(spec, folder):
            return folder
    return None


def how_to_get(spec, root=None):
    """The command(s) that fetch a missing dataset."""
    ways = [f"python preprocess.py --dataset {spec.name} --download"]
    if spec.apt_package:
        ways.insert(0, f"apt-get install {spec.apt_package}")
    ways.append(f"or copy the raw files into {raw_dir(spec.name, root)}/")
    return "; ".join(ways)


def download_raw(spec, root=None):
    """Download the raw files with torchvision's dataset class into datasets/<name>/raw/.

    Downloads go to a temporary folder first; only complete files are moved into raw/.
    """
    import torchvision.datasets as tvd

    target = raw_dir(spec.name, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".download-"))
    try:
        cls = getattr(tvd, spec.torchvision_class)
        for train in (True, False):
            cls(str(tmp), train=train, download=True)
        target.mkdir(parents=True, exist_ok=True)
        if spec.kind == "idx":  # torchvision keeps the .gz archives beside the extracted files
            for path in (tmp / spec.torchvision_class / "raw").glob("*.gz"):
                shutil.move(str(path), target / path.name)
        else:
            shutil.move(str(tmp / "cifar-10-python.tar.gz"), target / "cifar-10-python.tar.gz")
    except Exception as error:  # network unreachable, checksum mismatch, ...
        raise UserError(f"downloading {spec.title} failed ({type(error).__name__}: "
                        f"{str(error).strip().splitlines()[0] if str(error).strip() else error}). "
                        f"Is the network reachable? Nothing was written to {processed_dir(spec.name, root)}.")\
            from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not _has_raw(spec, target):
        raise UserError(f"downloading {spec.title} did not leave its raw files in {target}. "
                        f"Nothing was written to {processed_dir(spec.name, root)}.")
    return target


# ---------------------------------------------------------------------------------------------
# Preparing a dataset
# ---------------------------------------------------------------------------------------------
def _load_raw(spec, root=None, system_dirs=None, download=False):
    """-> ({split: (images, labels)}, [source records]) from the first place that has the files."""
    if spec.kind == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        # load_digits gives intensities 0..16: scale to 0..255 so that every dataset is uint8 pixels
        images = torch.from_numpy(np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
        labels = torch.from_numpy(digits.target.astype(np.int64))
        # a fixed, stratified 70/30 train/test split (load_digits ships no split of its own)
        rng = np.random.default_rng(0)
        test = np.zeros(len(labels), dtype=bool)
        for c in range(10):
            members = np.flatnonzero(digits.target == c)
            test[rng.choice(members, size=round(0.3 * len(members)), replace=False)] = True
        test = torch.from_numpy(test)
        import sklearn
        source = [{"file": "sklearn.datasets.load_digits", "version": sklearn.__version__,
                   "note": "pixels 0..16 scaled to 0..255; stratified 70/30 split, numpy seed 0"}]
        return {"train": (images[~test], labels[~test]), "test": (images[test], labels[test])}, source

    folder = find_raw(spec, root, system_dirs)
    if folder is None and download:
        folder = download_raw(spec, root)
    if folder is None:
        looked = ", ".join(str(d) for d in search_locations(spec, root, system_dirs))
        raise UserError(f"{spec.title} raw files not found (looked in {looked}). Get them with: "
                        f"{how_to_get(spec, root)}")
    with tempfile.TemporaryDirectory() as workdir:
        if spec.kind == "idx":
            sources = _idx_sources(folder)
            splits = {split: read_idx_pair(*sources[split], len(spec.classes)) for split in IDX_FILES}
            files = [p for pair in sources.values() for p in pair]
        else:
            batches = _cifar_folder(folder, workdir)
            splits = {split: read_cifar_batches([batches / n for n in names]) for split, names in CIFAR_FILES.items()}
            tarball = folder / "cifar-10-python.tar.gz"
            files = [tarball] if batches.is_relative_to(workdir) else \
                [batches / n for names in CIFAR_FILES.values() for n in names]
        records = [{"file": str(p), "sha256": sha256(p)} for p in files]
    return splits, records


def write_processed(name, splits, meta, root=None):
    """Write train.pt, test.pt and meta.json atomically (meta.json last: it marks completion)."""
    folder = processed_dir(name, root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "meta.json").unlink(missing_ok=True)
        for split, (images, labels) in splits.items():
            atomic_torch_save({"images": images.contiguous(), "labels": labels.contiguous()},
                              folder / f"{split}.pt")
        atomic_write_json(folder / "meta.json", meta)
    except OSError as error:
        raise UserError(f"cannot write {folder} ({type(error).__name__}: {error}).") from None


def make_meta(name, title, classes, splits, sources, **extra):
    return {
        "name": name,
        "title": title,
        "classes": list(classes),
        "shape": list(splits["train"][0].shape[1:]),
        "splits": {split: {"count": len(labels),
                           "per_class": [int((labels == c).sum()) for c in range(len(classes))]}
                   for split, (images, labels) in splits.items()},
        "pixel_scaling": "x / 255, then (x - 0.5) / 0.5 (applied when loading, tool.data.scale_images)",
        "sources": sources,
        **extra,
    }


def prepare(name, root=None, force=False, download=False, system_dirs=None, verbose=True):
    """Prepare one known dataset; returns 'prepared' or 'already prepared'. Raises UserError."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}'. Valid: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    if is_prepared(name, root) and not force:
        return "already prepared"
    splits, sources = _load_raw(spec, root, system_dirs, download)
    for split, (images, _) in splits.items():
        if tuple(images.shape[1:]) != spec.shape:
            raise UserError(f"{spec.title} {split} images have shape {tuple(images.shape[1:])}, "
                            f"expected {spec.shape}: the raw files are not {spec.title}.")
    write_processed(name, splits, make_meta(name, spec.title, spec.classes, splits, sources), root)
    if verbose:
        for split, (images, _) in splits.items():
            print(f"{name} {split} {tuple(images.shape)} {str(images.dtype).removeprefix('torch.')}")
    return "prepared"


def prepare_tuning_split(name, root=None, test_fraction=1 / 6, seed=0, force=False, verbose=True):
    """A tuning dataset `<name>-tune` made from `name`'s *training* images only.

    A stratified `test_fraction` of the training split (seeded) becomes its "test" split, the rest
    its "train" split. Settings are chosen on it, so the real test split is never looked at while
    tuning (for Fashion-MNIST: 50,000 / 10,000 images).
    """
    if not 0 < test_fraction < 1:
        raise UserError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    source = load_dataset(name, root)
    tune = f"{name}-tune"
    # The source's content is part of the settings: preparing the source again from other raw files
    # makes the tuning split stale, and it is then made again without --force.
    content = hashlib.sha256(source.train_images.numpy().tobytes())  # fed in turn: no joined copy
    content.update(source.train_labels.numpy().tobytes())
    settings = {"derived_from": f"{name} train split", "test_fraction": test_fraction, "seed": seed,
                "source_train_sha256": content.hexdigest()}
    if is_prepared(tune, root) and not force and _recorded_sources(tune, root) == [settings]:
        return tune
    rng = np.random.default_rng(seed)
    labels = source.train_labels.numpy()
    held = np.zeros(len(labels), dtype=bool)
    for c in range(len(source.classes)):
        members = np.flatnonzero(labels == c)
        held[rng.choice(members, size=int(round(test_fraction * len(members))), replace=False)] = True
    held = torch.from_numpy(held)
    splits = {"train": (source.train_images[~held], source.train_labels[~held]),
              "test": (source.train_images[held], source.train_labels[held])}
    meta = make_meta(tune, f"{source.meta.get('title', name)} (tuning split of the training images)",
                     source.classes, splits, [settings],
                     **({"preprocessing": source.meta["preprocessing"]} if "preprocessing" in source.meta else {}))
    write_processed(tune, splits, meta, root)
    if verbose:
        for split, (images, _) in splits.items():
            print(f"{tune} {split} {tuple(images.shape)} {str(images.dtype).removeprefix('torch.')}")
    return tune


def _recorded_sources(name, root=None):
    """The 'sources' a prepared dataset's meta.json records (None when unreadable)."""
    try:
        return json.loads((processed_dir(name, root) / "meta.json").read_text()).get("sources")
    except (OSError, ValueError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------------
# Loading a prepared dataset
# ---------------------------------------------------------------------------------------------
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


def load_dataset(name, root=None):
    """Load a prepared dataset. A missing dataset names the command that prepares it."""
    check_dataset_name(name, root)
    folder = processed_dir(name, root)
    if not is_prepared(name, root):
        raise UserError(f"dataset '{name}' is not prepared (nothing complete in {folder}). "
                        f"Run: python preprocess.py --dataset {name}")
    again = (f"Prepare it again: python preprocess.py --dataset {name} --force" if name in DATASETS else
             f"Prepare it again: python preprocess.py --dataset folder --path DIR --name {name} --force")
    try:
        meta = json.loads((folder / "meta.json").read_text())
        classes = [str(c) for c in meta["classes"]]
        parts = {split: torch.load(folder / f"{split}.pt", weights_only=True) for split in ("train", "test")}
        tensors = [parts[s][k] for s in ("train", "test") for k in ("images", "labels")]
    except (OSError, RuntimeError, EOFError, KeyError, ValueError, TypeError, IndexError, AttributeError,
            pickle.UnpicklingError) as error:
        raise UserError(f"{folder} is corrupt ({type(error).__name__}). {again}") from None
    for images, labels in (tensors[:2], tensors[2:]):
        if not (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)
                and images.dtype == torch.uint8 and images.ndim == 4
                and labels.dtype == torch.int64 and labels.ndim == 1 and len(images) == len(labels)
                and (len(labels) == 0 or 0 <= int(labels.min()) <= int(labels.max()) < len(classes))):
            raise UserError(f"{folder} holds tensors of the wrong format. {again}")
    return Dataset(name, classes, *tensors, meta=meta)


# ---------------------------------------------------------------------------------------------
# Protocols
# ---------------------------------------------------------------------------------------------
PROTOCOLS = ("one-anomalous-class", "one-normal-class")


@dataclass
class Split:
    """Images of one (protocol, class, seed) unit. Targets: 1 = anomaly, 0 = normal."""
    protocol: str
    target_class: int
    train: torch.Tensor  # uint8, normal only
    val: torch.Tensor  # uint8, normal only (drives early stopping and the threshold)
    test: torch.Tensor  # uint8, the whole test split
    test_targets: torch.Tensor  # int64, 1 = anomaly
    test_labels: torch.Tensor  # the original class labels
    counts: dict = field(default_factory=dict)

    def table(self):
        table = PrettyTable(["split", "normal", "anomalous", "total"])
        for split, (normal, anomalous) in self.counts.items():
            table.add_row([split, normal, anomalous, normal + anomalous])
        return table


def _split(ds, normal_train, test_targets, protocol, target_class, val_fraction, seed):
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    normal_idx = np.flatnonzero(normal_train.numpy())
    perm = np.random.default_rng(seed).permutation(normal_idx)
    n_val = int(round(val_fraction * len(perm)))
    if n_val < 1 or len(perm) - n_val < 2:
        raise UserError(f"{ds.name}: too few normal training images ({len(perm)}) for a train/validation split")
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    n_anomalous = int(test_targets.sum())
    counts = {"train": (len(train_idx), 0), "validation": (n_val, 0),
              "test": (len(test_targets) - n_anomalous, n_anomalous)}
    return Split(protocol, target_class, ds.train_images[torch.from_numpy(train_idx)],
                 ds.train_images[torch.from_numpy(val_idx)], ds.test_images, test_targets.long(),
                 ds.test_labels, counts)


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
