"""The data layer: raw files in their real formats -> processed tensors, loading, pixel scaling,
the tuning split, both protocols, and a clean message for every bad input."""
import gzip
import hashlib
import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

import preprocess
from tool.datasets import DATASETS, load_dataset, processed_dir, raw_dir, scale_images
from tool.prepare import CIFAR_FILES, IDX_FILES, find_raw, prepare, prepare_tuning_split
from tool.protocol import make_split, split_one_anomalous_class, split_one_normal_class
from tool.errors import UserError

IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801  # IDX: unsigned bytes, 3 dims / 1 dim


# ---------------------------------------------------------------------------------------------
# Writing raw files in their real formats
# ---------------------------------------------------------------------------------------------
def synthetic_arrays(n, shape, seed, n_classes=10):
    """n random uint8 images of `shape` and labels seed, seed + 1, ... (mod n_classes)."""
    images = np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)
    return images, (np.arange(n) + seed) % n_classes


def idx_bytes(array, magic):
    """An IDX file: big-endian magic, one big-endian uint32 per dimension, then the bytes."""
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_file(path, data, gz=False):
    path = path.with_name(path.name + ".gz") if gz else path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_idx_raw(root, name="mnist", n_train=30, n_test=20, gz=False, shape=(28, 28)):
    """The four IDX files of an MNIST-style dataset in root/<name>/raw/ -> {split: (images, labels)}."""
    arrays = {}
    for seed, (split, (images_file, labels_file)) in enumerate(IDX_FILES.items()):
        images, labels = synthetic_arrays(n_train if split == "train" else n_test, shape, seed)
        write_file(raw_dir(name, root) / images_file, idx_bytes(images, IMAGES_MAGIC), gz)
        write_file(raw_dir(name, root) / labels_file, idx_bytes(labels, LABELS_MAGIC), gz)
        arrays[split] = images, labels
    return arrays


def cifar_batch_bytes(data, labels, protocol):
    """One CIFAR-10 python batch. Protocol 2 names numpy's reconstructor the way the real files
    (pickled by Python 2 and numpy 1) do; protocols 4 and 5 the way numpy 2 does today."""
    batch = {"batch_label": "synthetic", "labels": [int(label) for label in labels], "data": data,
             "filenames": [f"image_{i}.png" for i in range(len(labels))]}
    raw = pickle.dumps(batch, protocol=protocol)
    return raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n") if protocol == 2 else raw


def write_cifar_raw(root, layout="flat", per_batch=4):
    """data_batch_1..5 and test_batch with (N, 3072) uint8 rows, as the home site ships them:
    in raw/ ('flat'), in raw/cifar-10-batches-py/ ('folder') or as raw/cifar-10-python.tar.gz
    ('tarball'). -> {split: (rows, labels)}."""
    raw = raw_dir("cifar10", root)
    folder = raw if layout == "flat" else raw / "cifar-10-batches-py"
    arrays, seed = {}, 0
    for split, names in CIFAR_FILES.items():
        parts = []
        for name in names:
            rows, labels = synthetic_arrays(per_batch, (3 * 32 * 32,), seed)
            write_file(folder / name, cifar_batch_bytes(rows, labels, protocol=(2, 4, 5)[seed % 3]))
            parts.append((rows, labels))
            seed += 1
        arrays[split] = tuple(np.concatenate(column) for column in zip(*parts))
    if layout == "tarball":
        with tarfile.open(raw / "cifar-10-python.tar.gz", "w:gz") as archive:
            archive.add(folder, arcname="cifar-10-batches-py")
        shutil.rmtree(folder)
    return arrays


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


def rows(images):
    """Images as a sorted list of byte strings, to compare sets of images (random ones are unique)."""
    return sorted(image.numpy().tobytes() for image in images)


def files_in(folder):
    return sorted(p.name for p in Path(folder).rglob("*")) if Path(folder).exists() else []


# ---------------------------------------------------------------------------------------------
# Running preprocess.py
# ---------------------------------------------------------------------------------------------
def run_cli(repo, *args):
    return subprocess.run([sys.executable, "preprocess.py", *args], cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)


def assert_clean_failure(result, *texts):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    for text in texts:
        assert text in result.stderr


def main_fails(capsys, *argv):
    """preprocess.main in this process (so monkeypatch reaches it): exit code 2, one message; -> stderr."""
    with pytest.raises(SystemExit) as exit_info:  # any other exception would escape as a traceback
        preprocess.main(list(argv))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


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


# ---------------------------------------------------------------------------------------------
# Real data: Fashion-MNIST from the Debian package, and scikit-learn's digits
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def fmnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    if find_raw(DATASETS["fmnist"], root) is None:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    prepare("fmnist", root, verbose=False)
    return root


def test_real_fashion_mnist(fmnist_root):
    ds = load_dataset("fmnist", fmnist_root)
    assert tuple(ds.train_images.shape) == (60_000, 1, 28, 28)
    assert tuple(ds.test_images.shape) == (10_000, 1, 28, 28)
    assert ds.train_images.dtype == torch.uint8
    assert torch.bincount(ds.train_labels).tolist() == [6000] * 10
    assert torch.bincount(ds.test_labels).tolist() == [1000] * 10
    assert ds.meta["splits"]["train"]["per_class"] == [6000] * 10
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert len(ds.meta["sources"]) == 4
    for record in ds.meta["sources"]:  # read from the Debian package's folder, each file's sha256 recorded
        assert Path(record["file"]).parent == Path(DATASETS["fmnist"].system_dirs[0])
        assert len(record["sha256"]) == 64


def test_real_fashion_mnist_tuning_split(fmnist_root):
    tune = load_dataset(prepare_tuning_split("fmnist", fmnist_root, verbose=False), fmnist_root)
    assert (len(tune.train_labels), len(tune.test_labels)) == (50_000, 10_000)
    assert torch.bincount(tune.test_labels).tolist() == [1000] * 10


def test_digits_end_to_end(tmp_path):
    assert prepare("digits", tmp_path, verbose=False) == "prepared"
    ds = load_dataset("digits", tmp_path)
    assert ds.shape == (1, 8, 8) and ds.train_images.dtype == torch.uint8
    assert len(ds.train_labels) + len(ds.test_labels) == 1797
    assert len(ds.classes) == 10
    assert set(ds.train_labels.tolist()) == set(ds.test_labels.tolist()) == set(range(10))
    all_images = torch.cat([ds.train_images, ds.test_images])
    assert (int(all_images.min()), int(all_images.max())) == (0, 255)


def test_scale_images_maps_0_255_to_minus_one_one():
    scaled = scale_images(torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(1, 1, 1, 3))
    assert scaled.dtype == torch.float32
    assert scaled.flatten().tolist() == pytest.approx([-1.0, -0.6, 1.0])


# ---------------------------------------------------------------------------------------------
# The tuning split
# ---------------------------------------------------------------------------------------------
def test_tuning_split_draws_from_training_images_only(tmp_path, make_prepared):
    name = make_prepared(tmp_path, n_train_per_class=12, n_test_per_class=3)
    source = load_dataset(name, tmp_path)
    tune = load_dataset(prepare_tuning_split(name, tmp_path, test_fraction=0.25, seed=0, verbose=False), tmp_path)
    assert tune.name == f"{name}-tune"
    # together exactly the source's training images, disjoint, none of its test images
    assert rows(torch.cat([tune.train_images, tune.test_images])) == rows(source.train_images)
    assert not set(rows(tune.train_images)) & set(rows(tune.test_images))
    assert not set(rows(tune.test_images)) & set(rows(source.test_images))
    # stratified: 3 of every class's 12 training images
    assert torch.bincount(tune.test_labels).tolist() == [3] * 10
    assert torch.bincount(tune.train_labels).tolist() == [9] * 10


def test_tuning_split_is_seeded(tmp_path, make_prepared):
    name = make_prepared(tmp_path, n_train_per_class=12, n_test_per_class=3)

    def held_out(seed, force=False):
        tune = prepare_tuning_split(name, tmp_path, test_fraction=0.25, seed=seed, force=force, verbose=False)
        return rows(load_dataset(tune, tmp_path).test_images)

    first = held_out(0)
    assert held_out(0, force=True) == first
    assert held_out(1) != first  # other settings than the prepared ones: made again, no force needed
    assert held_out(0) == first


def test_tuning_split_follows_its_source_when_that_is_prepared_again(tmp_path):
    write_idx_raw(tmp_path, n_train=30)
    prepare("mnist", tmp_path, verbose=False)
    prepare_tuning_split("mnist", tmp_path, verbose=False)
    write_idx_raw(tmp_path, n_train=40)  # other raw files: the source is prepared again with --force
    prepare("mnist", tmp_path, force=True, verbose=False)
    tune = load_dataset(prepare_tuning_split("mnist", tmp_path, verbose=False), tmp_path)  # no force needed
    assert len(tune.train_images) + len(tune.test_images) == 40
    assert rows(torch.cat([tune.train_images, tune.test_images])) == rows(load_dataset("mnist", tmp_path).train_images)


# ---------------------------------------------------------------------------------------------
# Protocols
# ---------------------------------------------------------------------------------------------
PROTOCOLS = {"one-anomalous-class": lambda labels, c: labels == c,  # -> which images are anomalies
             "one-normal-class": lambda labels, c: labels != c}


@pytest.fixture
def tiny(tmp_path, make_prepared):
    return load_dataset(make_prepared(tmp_path, n_train_per_class=20, n_test_per_class=5), tmp_path)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_protocol_split(tiny, protocol):
    c = 3
    split = make_split(tiny, protocol, c, val_fraction=0.1, seed=0)
    is_anomaly = PROTOCOLS[protocol]
    label_of = {image.numpy().tobytes(): int(label) for image, label in zip(tiny.train_images, tiny.train_labels)}
    train_labels = torch.tensor([label_of[r] for r in rows(split.train)])
    val_labels = torch.tensor([label_of[r] for r in rows(split.val)])
    assert not is_anomaly(train_labels, c).any() and not is_anomaly(val_labels, c).any()
    normal = tiny.train_images[~is_anomaly(tiny.train_labels, c)]
    assert rows(torch.cat([split.train, split.val])) == rows(normal)  # all normal images, each once
    assert not set(rows(split.train)) & set(rows(split.val))
    assert len(split.val) == round(0.1 * len(normal))
    assert torch.equal(split.test, tiny.test_images)
    assert torch.equal(split.test_targets, is_anomaly(tiny.test_labels, c).long())
    assert split.counts["test"] == (int((split.test_targets == 0).sum()), int(split.test_targets.sum()))
    assert split.counts["train"] == (len(split.train), 0) and split.counts["validation"] == (len(split.val), 0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_protocol_split_is_seeded(tiny, protocol):
    first, again, other = (make_split(tiny, protocol, 3, seed=s) for s in (0, 0, 1))
    assert torch.equal(first.train, again.train) and torch.equal(first.val, again.val)
    assert rows(first.val) != rows(other.val)


def test_protocol_functions_and_class_by_name_or_index(tiny):
    by_index = split_one_anomalous_class(tiny, 4)
    for value in ("class4", "4", np.int64(4)):
        assert torch.equal(split_one_anomalous_class(tiny, value).val, by_index.val)
    assert torch.equal(split_one_normal_class(tiny, "class4").test_targets, (tiny.test_labels != 4).long())
    with pytest.raises(UserError, match="unknown protocol 'both'. Valid: one-anomalous-class, one-normal-class"):
        make_split(tiny, "both", 4)


@pytest.mark.parametrize("value", [10, -1, "10", "class10", 2.5], ids=["10", "-1", "str-10", "class10", "2.5"])
def test_class_outside_the_dataset_gives_the_valid_range(tiny, value):
    for protocol in PROTOCOLS:
        with pytest.raises(UserError, match=r"valid are 0\.\.9"):
            make_split(tiny, protocol, value)


# ---------------------------------------------------------------------------------------------
# Bad input: a message, a non-zero exit, no traceback, nothing left in processed/
# ---------------------------------------------------------------------------------------------
def test_cli_unknown_dataset(repo, tmp_path):
    result = run_cli(repo, "--dataset", "imagenet", "--data-dir", str(tmp_path))
    assert_clean_failure(result, "unknown dataset 'imagenet'", "Valid: mnist, fmnist, kmnist, cifar10, digits")
    assert files_in(tmp_path) == []
    with pytest.raises(UserError, match="unknown dataset 'imagenet'. Valid: mnist, fmnist"):
        load_dataset("imagenet", tmp_path)


def test_cli_missing_dataset(repo, tmp_path):
    result = run_cli(repo, "--dataset", "mnist", "--data-dir", str(tmp_path))
    assert_clean_failure(result, "MNIST raw files not found", f"looked in {raw_dir('mnist', tmp_path)}",
                         "python preprocess.py --dataset mnist --download")
    assert files_in(tmp_path) == []


def test_missing_fmnist_names_the_debian_package(tmp_path):
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist") as error:
        prepare("fmnist", tmp_path, system_dirs=(), verbose=False)
    assert f"looked in {raw_dir('fmnist', tmp_path)}" in str(error.value)
    assert "python preprocess.py --dataset fmnist --download" in str(error.value)


def truncate_idx_images(root):
    """MNIST raw files in root whose training images lose their last 100 bytes -> that file."""
    write_idx_raw(root)
    images = raw_dir("mnist", root) / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    return images


def test_cli_truncated_idx_file(repo, tmp_path):
    images = truncate_idx_images(tmp_path)
    result = run_cli(repo, "--dataset", "mnist", "--data-dir", str(tmp_path))
    assert_clean_failure(result, str(images), "truncated or corrupt")
    assert files_in(processed_dir("mnist", tmp_path)) == []


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


def small_images(root):
    write_idx_raw(root, shape=(8, 8))


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


def corrupt_cifar_tarball(root):
    write_cifar_raw(root, "tarball")
    tarball = raw_dir("cifar10", root) / "cifar-10-python.tar.gz"
    tarball.write_bytes(tarball.read_bytes()[:500])


BAD_RAW_FILES = [  # (dataset, how the raw files are broken, what the message must say)
    ("mnist", truncate_gzip, r"t10k-images-idx3-ubyte.gz: cannot be read .*truncated or corrupt"),
    ("mnist", corrupt_gzip, r"t10k-images-idx3-ubyte.gz: cannot be read .*truncated or corrupt"),
    ("mnist", wrong_magic, r"train-images-idx3-ubyte: wrong IDX magic number 0x00000802 \(expected 0x00000803"),
    ("mnist", huge_header, r"train-images-idx3-ubyte: 16 bytes but its header .* truncated or corrupt"),
    ("mnist", fewer_labels, r"t10k-images-idx3-ubyte holds 20 images but \S*t10k-labels-idx1-ubyte holds 19"),
    ("mnist", label_out_of_range, r"t10k-labels-idx1-ubyte: label 10 outside 0..9"),
    ("mnist", small_images, r"MNIST train images have shape \(1, 8, 8\), expected \(1, 28, 28\)"),
    ("cifar10", corrupt_cifar_batch, r"data_batch_3: not a readable CIFAR-10 python batch"),
    ("cifar10", forged_cifar_batch, r"test_batch: not a readable CIFAR-10 python batch .*unexpected object"),
    ("cifar10", cifar_labels_mismatch, r"data_batch_5: 4 images but labels of shape \(3,\)"),
    ("cifar10", corrupt_cifar_tarball, r"cifar-10-python.tar.gz: cannot be extracted .*truncated or corrupt"),
]


@pytest.mark.parametrize("name, break_raw, message", BAD_RAW_FILES, ids=[b.__name__ for _, b, _ in BAD_RAW_FILES])
def test_bad_raw_files(tmp_path, capsys, name, break_raw, message):
    break_raw(tmp_path)
    stderr = main_fails(capsys, "--dataset", name, "--data-dir", str(tmp_path))
    assert stderr.startswith("error: ") and len(stderr.strip().splitlines()) == 1
    assert re.search(message, stderr), stderr
    assert files_in(processed_dir(name, tmp_path)) == []
    assert not (tmp_path / "code-ran").exists()


def test_failed_download_leaves_nothing(tmp_path, capsys, monkeypatch):
    import torchvision.datasets

    class Unreachable:
        def __init__(self, root, train=True, download=False):
            (Path(root) / "MNIST" / "raw").mkdir(parents=True)  # a partial download, then the failure
            (Path(root) / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b")
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Unreachable)
    stderr = main_fails(capsys, "--dataset", "mnist", "--download", "--data-dir", str(tmp_path))
    assert "downloading MNIST failed (URLError" in stderr and "Is the network reachable?" in stderr
    assert files_in(processed_dir("mnist", tmp_path)) == []
    assert files_in(raw_dir("mnist", tmp_path)) == []
    assert not list((tmp_path / "mnist").glob(".download-*"))


def test_download_that_leaves_no_files(tmp_path, capsys, monkeypatch):
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "KMNIST", lambda root, train=True, download=False: None)
    stderr = main_fails(capsys, "--dataset", "kmnist", "--download", "--data-dir", str(tmp_path))
    assert "downloading Kuzushiji-MNIST did not leave its raw files" in stderr
    assert files_in(processed_dir("kmnist", tmp_path)) == []


def test_unwritable_data_dir(tmp_path, capsys):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    stderr = main_fails(capsys, "--dataset", "digits", "--data-dir", str(not_a_folder))
    assert f"cannot write {processed_dir('digits', not_a_folder)}" in stderr


def write_garbage(path):
    path.write_bytes(b"not a torch file")


def truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def float_images(path):
    torch.save({"images": torch.zeros(2, 1, 8, 8), "labels": torch.zeros(2, dtype=torch.int64)}, path)


def drop_classes(path):
    path.write_text(json.dumps({"name": "tiny"}))


BAD_PROCESSED_FILES = [  # (file, how it is broken, what the message must say)
    ("train.pt", write_garbage, "is corrupt"),
    ("test.pt", truncate, "is corrupt"),
    ("meta.json", truncate, "is corrupt"),
    ("meta.json", drop_classes, "is corrupt"),
    ("train.pt", float_images, "holds tensors of the wrong format"),
]


@pytest.mark.parametrize("file, damage, message", BAD_PROCESSED_FILES,
                         ids=[f"{f}-{d.__name__}" for f, d, _ in BAD_PROCESSED_FILES])
def test_corrupt_processed_file(tmp_path, make_prepared, file, damage, message):
    name = make_prepared(tmp_path)
    damage(processed_dir(name, tmp_path) / file)
    # "tiny" is not a built-in dataset, so the message gives the folder-dataset command
    with pytest.raises(UserError, match=f"{message}.*python preprocess.py --dataset folder --path DIR --name {name} --force"):
        load_dataset(name, tmp_path)


def test_bad_tuning_fraction(tmp_path, make_prepared):
    with pytest.raises(UserError, match=r"test_fraction must lie in \(0, 1\)"):
        prepare_tuning_split(make_prepared(tmp_path), tmp_path, test_fraction=1.5)


# ---------------------------------------------------------------------------------------------
# Re-running
# ---------------------------------------------------------------------------------------------
def test_prepare_skips_a_prepared_dataset_unless_forced(tmp_path):
    write_idx_raw(tmp_path, n_train=10, n_test=10)
    assert prepare("mnist", tmp_path, verbose=False) == "prepared"
    train_pt = processed_dir("mnist", tmp_path) / "train.pt"
    written = train_pt.stat().st_mtime_ns
    assert prepare("mnist", tmp_path, verbose=False) == "already prepared"
    assert train_pt.stat().st_mtime_ns == written
    assert prepare("mnist", tmp_path, force=True, verbose=False) == "prepared"
    assert files_in(processed_dir("mnist", tmp_path)) == ["meta.json", "test.pt", "train.pt"]


def test_cli_without_arguments_prints_the_table(repo, tmp_path):
    result = run_cli(repo, "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    table = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("|")}
    for name in ("mnist", "kmnist", "cifar10"):
        assert "missing" in table[name] and f"python preprocess.py --dataset {name} --download" in table[name]
    assert "| prepared" in table["digits"]
    assert load_dataset("digits", tmp_path).shape == (1, 8, 8)
    # fmnist depends on this machine: prepared from the Debian package when installed, else missing
    assert ("| prepared" in table["fmnist"]) == (find_raw(DATASETS["fmnist"], tmp_path / "nowhere") is not None)


def test_cli_without_arguments_reports_a_broken_dataset_and_prepares_the_rest(repo, tmp_path):
    truncate_idx_images(tmp_path)
    result = run_cli(repo, "--data-dir", str(tmp_path))
    assert_clean_failure(result, "could not prepare mnist")
    table = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("|")}
    assert "failed" in table["mnist"] and "truncated or corrupt" in table["mnist"]
    assert "| prepared" in table["digits"]  # the broken mnist did not stop the datasets after it
    assert files_in(processed_dir("mnist", tmp_path)) == []
