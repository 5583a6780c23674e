"""Tests of tool/data/prepare.py: finding, downloading and preparing raw files, tuning splits, ensure_prepared."""
import shutil
import urllib.error
from pathlib import Path

import pytest
import torch

import main
from conftest import files_in, main_fails, rows, write_idx_raw
from tool.data.datasets import DATASETS, load_dataset, processed_dir, raw_dir
from tool.errors import UserError
from tool.data.prepare import find_raw, prepare, prepare_tuning_split


# ---------------------------------------------------------------------------------------------
# Real data: Fashion-MNIST from the Debian package
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


# ---------------------------------------------------------------------------------------------
# Finding, downloading, preparing once
# ---------------------------------------------------------------------------------------------
def test_missing_fmnist_names_the_debian_package(tmp_path):
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist") as error:
        prepare("fmnist", tmp_path, system_dirs=(), verbose=False)
    assert f"looked in {raw_dir('fmnist', tmp_path)}" in str(error.value)
    assert "python preprocess.py --dataset fmnist --download" in str(error.value)


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


def test_prepare_skips_a_prepared_dataset_unless_forced(tmp_path):
    write_idx_raw(tmp_path, n_train=10, n_test=10)
    assert prepare("mnist", tmp_path, verbose=False) == "prepared"
    train_pt = processed_dir("mnist", tmp_path) / "train.pt"
    written = train_pt.stat().st_mtime_ns
    assert prepare("mnist", tmp_path, verbose=False) == "already prepared"
    assert train_pt.stat().st_mtime_ns == written
    assert prepare("mnist", tmp_path, force=True, verbose=False) == "prepared"
    assert files_in(processed_dir("mnist", tmp_path)) == ["meta.json", "test.pt", "train.pt"]


def test_unprepared_dataset_names_the_preprocess_command(tmp_path):
    # mnist has no raw files here (fmnist would be prepared from the Debian package on first use)
    with pytest.raises(UserError, match="python preprocess.py --dataset mnist"):
        main.run(["--data-dir", str(tmp_path), "--output-dir", str(tmp_path), "--dataset", "mnist"])


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


def test_bad_tuning_fraction(tmp_path, make_prepared):
    with pytest.raises(UserError, match=r"test_fraction must lie in \(0, 1\)"):
        prepare_tuning_split(make_prepared(tmp_path), tmp_path, test_fraction=1.5)


def test_a_tuning_split_never_overwrites_a_dataset_it_did_not_make(tmp_path, make_prepared):
    """Issue 12: --tuning-split X silently overwrote a user's own folder dataset named X-tune."""
    source = make_prepared(tmp_path, "parts", n_train_per_class=6, n_test_per_class=2)
    mine = make_prepared(tmp_path, "parts-tune", n_train_per_class=3, n_test_per_class=1)  # the user's own dataset
    before = {p.name: p.read_bytes() for p in processed_dir(mine, tmp_path).iterdir()}
    for force in (False, True):
        with pytest.raises(UserError, match=rf"{processed_dir(mine, tmp_path)} holds a dataset that is not a tuning "
                                            rf"split made by this code .*Move or rename"):
            prepare_tuning_split(source, tmp_path, force=force, verbose=False)
    assert {p.name: p.read_bytes() for p in processed_dir(mine, tmp_path).iterdir()} == before
    # a tuning split this code made is made again when its settings change (test_tuning_split_is_seeded)
    shutil.rmtree(tmp_path / mine)
    assert prepare_tuning_split(source, tmp_path, verbose=False) == mine
    assert prepare_tuning_split(source, tmp_path, seed=1, verbose=False) == mine
