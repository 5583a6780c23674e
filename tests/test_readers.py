"""Tests of tool/readers.py: IDX, CIFAR-10 batches and digits read exactly; malformed raw files named clearly."""
import hashlib
import pickle
import re
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import (IMAGES_MAGIC, LABELS_MAGIC, cifar_batch_bytes, files_in, idx_bytes, main_fails, synthetic_arrays,
                      write_cifar_raw, write_file, write_idx_raw)
from tool.datasets import load_dataset, processed_dir, raw_dir
from tool.prepare import CIFAR_FILES, IDX_FILES, prepare


def check_prepared(root, name, arrays, shape):
    """The processed dataset equals the raw arrays; meta.json counts every class; returns its meta."""
    ds = load_dataset(name, root)
    for split, (images, labels) in (("train", (ds.train_images, ds.train_labels)),
                                    ("test", (ds.test_images, ds.test_labels))):
        raw_images, raw_labels = arrays[split]
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        assert tuple(images.shape) == (len(raw_labels), *shape)
        assert torch.equal(images, torch.from_numpy(raw_images).reshape(-1, *shape))
        assert labels.tolist() == raw_labels.tolist()
        assert ds.meta["splits"][split]["per_class"] == np.bincount(raw_labels, minlength=10).tolist()
        assert ds.meta["splits"][split]["count"] == len(raw_labels)
    for record in ds.meta["sources"]:
        assert record["sha256"] == hashlib.sha256(Path(record["file"]).read_bytes()).hexdigest()
    return ds


# ---------------------------------------------------------------------------------------------
# Raw formats through the real code path: prepare(...), then load_dataset(...)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
def test_idx_files_prepare_and_load(tmp_path, gz):
    arrays = write_idx_raw(tmp_path, gz=gz)
    assert prepare("mnist", tmp_path, verbose=False) == "prepared"
    ds = check_prepared(tmp_path, "mnist", arrays, (1, 28, 28))
    suffix = ".gz" if gz else ""
    assert sorted(Path(r["file"]).name for r in ds.meta["sources"]) == sorted(
        name + suffix for pair in IDX_FILES.values() for name in pair)


@pytest.mark.parametrize("layout", ["flat", "folder", "tarball"])
def test_cifar_batches_prepare_and_load(tmp_path, layout):
    arrays = write_cifar_raw(tmp_path, layout)
    assert prepare("cifar10", tmp_path, verbose=False) == "prepared"
    ds = check_prepared(tmp_path, "cifar10", arrays, (3, 32, 32))
    # CIFAR stores each row as the 1024 red, then green, then blue values, each plane row-major
    pixels = arrays["train"][0]
    assert torch.equal(ds.train_images[0, 0], torch.from_numpy(pixels[0, :1024].reshape(32, 32)))
    assert torch.equal(ds.train_images[0, 2], torch.from_numpy(pixels[0, 2048:].reshape(32, 32)))
    assert ds.train_images[1, 1, 0, 5] == pixels[1, 1024 + 5]
    sources = [Path(r["file"]).name for r in ds.meta["sources"]]
    assert sources == (["cifar-10-python.tar.gz"] if layout == "tarball"
                       else [n for names in CIFAR_FILES.values() for n in names])


def test_digits_end_to_end(tmp_path):
    assert prepare("digits", tmp_path, verbose=False) == "prepared"
    ds = load_dataset("digits", tmp_path)
    assert ds.shape == (1, 8, 8) and ds.train_images.dtype == torch.uint8
    assert len(ds.train_labels) + len(ds.test_labels) == 1797
    assert len(ds.classes) == 10
    assert set(ds.train_labels.tolist()) == set(ds.test_labels.tolist()) == set(range(10))
    all_images = torch.cat([ds.train_images, ds.test_images])
    assert (int(all_images.min()), int(all_images.max())) == (0, 255)


# ---------------------------------------------------------------------------------------------
# Bad raw files: one message naming the file, exit code 2, nothing in processed/, no code run
# ---------------------------------------------------------------------------------------------
def truncate_gzip(root):
    write_idx_raw(root, gz=True)
    path = raw_dir("mnist", root) / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def corrupt_gzip(root):
    write_idx_raw(root, gz=True)
    path = raw_dir("mnist", root) / "t10k-images-idx3-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[20:60] = bytes(40)
    path.write_bytes(bytes(data))


def wrong_magic(root):
    write_idx_raw(root)
    images, _ = synthetic_arrays(30, (28, 28), seed=0)
    write_file(raw_dir("mnist", root) / "train-images-idx3-ubyte", idx_bytes(images, 0x00000802))


def huge_header(root):
    """dims 2**31 x 2**31 x 2**31 and no pixels (the product wraps around to 0 in int64)."""
    write_idx_raw(root)
    write_file(raw_dir("mnist", root) / "train-images-idx3-ubyte", struct.pack(">4I", IMAGES_MAGIC, *[2**31] * 3))


def fewer_labels(root):
    write_idx_raw(root)
    _, labels = synthetic_arrays(19, (), seed=0)
    write_file(raw_dir("mnist", root) / "t10k-labels-idx1-ubyte", idx_bytes(labels, LABELS_MAGIC))


def label_out_of_range(root):
    write_idx_raw(root)
    write_file(raw_dir("mnist", root) / "t10k-labels-idx1-ubyte", idx_bytes(np.full(20, 10), LABELS_MAGIC))


def corrupt_cifar_batch(root):
    write_cifar_raw(root)
    (raw_dir("cifar10", root) / "data_batch_3").write_bytes(b"\x80\x02}q\x00(X\x04\x00\x00\x00data")


class _Forged:
    """Unpickling this runs code: open(marker, 'w') creates the marker file."""
    marker = None

    def __reduce__(self):
        return open, (str(self.marker), "w")


def forged_cifar_batch(root):
    write_cifar_raw(root)
    _Forged.marker = root / "code-ran"
    (raw_dir("cifar10", root) / "test_batch").write_bytes(pickle.dumps({"data": _Forged(), "labels": [0]}))


def cifar_labels_mismatch(root):
    write_cifar_raw(root)
    rows, labels = synthetic_arrays(4, (3072,), seed=0)
    write_file(raw_dir("cifar10", root) / "data_batch_5", cifar_batch_bytes(rows, labels[:3], protocol=4))


def empty_idx(root):
    """A well-formed IDX images file of 0 images (torchvision's reader crashed on it)."""
    write_idx_raw(root)
    write_file(raw_dir("mnist", root) / "t10k-images-idx3-ubyte", idx_bytes(np.zeros((0, 28, 28)), IMAGES_MAGIC))


def forged_batch_in_the_tarball(root):
    """A forged test_batch inside cifar-10-python.tar.gz: the message names the tarball, not the
    temporary file it was extracted to."""
    write_cifar_raw(root, "folder")
    folder = raw_dir("cifar10", root) / "cifar-10-batches-py"
    _Forged.marker = root / "code-ran"
    (folder / "test_batch").write_bytes(pickle.dumps({"data": _Forged(), "labels": [0]}))
    with tarfile.open(raw_dir("cifar10", root) / "cifar-10-python.tar.gz", "w:gz") as archive:
        archive.add(folder, arcname="cifar-10-batches-py")
    shutil.rmtree(folder)


BAD_RAW_FILES = [  # (dataset, how the raw files are broken, what the message must say)
    ("mnist", truncate_gzip, r"t10k-images-idx3-ubyte.gz: cannot be read .*truncated or corrupt"),
    ("mnist", corrupt_gzip, r"t10k-images-idx3-ubyte.gz: cannot be read .*truncated or corrupt"),
    ("mnist", wrong_magic, r"train-images-idx3-ubyte: wrong IDX magic number 0x00000802 \(expected 0x00000803"),
    ("mnist", huge_header, r"train-images-idx3-ubyte: 16 bytes but its header .* truncated or corrupt"),
    ("mnist", fewer_labels, r"t10k-images-idx3-ubyte holds 20 images but \S*t10k-labels-idx1-ubyte holds 19"),
    ("mnist", label_out_of_range, r"t10k-labels-idx1-ubyte: label 10 outside 0..9"),
    ("cifar10", corrupt_cifar_batch, r"data_batch_3: not a readable CIFAR-10 python batch"),
    ("cifar10", forged_cifar_batch, r"test_batch: not a readable CIFAR-10 python batch .*unexpected object"),
    ("cifar10", cifar_labels_mismatch, r"data_batch_5: 4 images but labels of shape \(3,\)"),
    ("mnist", empty_idx, r"t10k-images-idx3-ubyte: a well-formed IDX file, but it holds no image "
                         r"\(header \[0, 28, 28\]\)"),
    ("cifar10", forged_batch_in_the_tarball, r"^error: /\S+/cifar10/raw/cifar-10-python.tar.gz \(its member "
                                             r"cifar-10-batches-py/test_batch\): not a readable CIFAR-10 python batch "
                                             r"\(UnpicklingError: unexpected object"),
]


@pytest.mark.parametrize("name, break_raw, message", BAD_RAW_FILES, ids=[b.__name__ for _, b, _ in BAD_RAW_FILES])
def test_bad_raw_files(tmp_path, capsys, name, break_raw, message):
    break_raw(tmp_path)
    stderr = main_fails(capsys, "--dataset", name, "--data-dir", str(tmp_path))
    assert stderr.startswith("error: ") and len(stderr.strip().splitlines()) == 1
    assert re.search(message, stderr), stderr
    assert files_in(processed_dir(name, tmp_path)) == []
    assert not (tmp_path / "code-ran").exists()
