"""Tests of tool/data/folder.py: own image folders (own split or a seeded stratified one), bad folders, any file name."""
import json
import os

import numpy as np
import pytest

from conftest import CLASSES, ENV, NAME, command, write_images
from tool.data.datasets import load_dataset
from tool.errors import UserError
from tool.data.folder import prepare_folder, read_image
from tool.data.protocol import make_split


def test_preprocess_skips_and_lists_bad_files_and_records_its_preprocessing(own_prepared):
    data_dir, printed = own_prepared
    assert "skipped 2 file(s)" in printed
    assert "train/bright/corrupt.png: unreadable" in printed and "train/dark/notes.txt: not a PNG" in printed
    assert "1 of 67 image(s) resized" in printed  # the 16 x 16 image; 12 x 12 is the most common size
    meta = json.loads((data_dir / NAME / "processed" / "meta.json").read_text())
    assert meta["classes"] == list(CLASSES) and meta["shape"] == [3, 12, 12]
    assert meta["splits"]["train"]["per_class"] == [17, 16, 16] and meta["splits"]["test"]["per_class"] == [6, 6, 6]
    assert {k: meta["preprocessing"][k] for k in ("size", "channels", "grayscale", "interpolation")} == \
        {"size": [12, 12], "channels": 3, "grayscale": False, "interpolation": "area"}
    assert [s["file"] for s in meta["skipped"]] == ["train/bright/corrupt.png", "train/dark/notes.txt"]
    assert meta["files"]["test"][:2] == ["test/bright/bright_00.png", "test/bright/bright_01.png"]
    ds = load_dataset(NAME, data_dir)
    assert ds.class_index("bright") == ds.class_index("0") == ds.class_index(0) == 0
    assert ds.class_index("striped") == ds.class_index("2") == 2
    bright = ds.train_images[ds.train_labels == 0].float().mean(dim=(0, 2, 3))
    assert bright[0] > bright[2] + 50  # red-tinted images: channel 0 is red (BGR -> RGB)


def test_flat_folder_gets_a_seeded_stratified_split(tmp_path):
    rng = np.random.default_rng(1)
    for kind, n in (("bright", 10), ("dark", 15)):
        write_images(tmp_path / "flat" / kind, kind, n, rng)

    def files(name, **kwargs):
        assert prepare_folder(tmp_path / "flat", name, tmp_path / "data", verbose=False, **kwargs) == "prepared"
        return json.loads((tmp_path / "data" / name / "processed" / "meta.json").read_text())

    meta = files("a", size=(6, 8), grayscale=True)
    assert meta["shape"] == [1, 6, 8] and meta["preprocessing"]["grayscale"] is True
    assert meta["splits"]["test"]["per_class"] == [2, 3] and meta["splits"]["train"]["per_class"] == [8, 12]
    assert files("b")["files"] == meta["files"]  # same seed, same split
    assert files("c", seed=1, test_fraction=0.4)["splits"]["test"]["per_class"] == [4, 6]
    assert prepare_folder(tmp_path / "flat", "a", tmp_path / "data", verbose=False).startswith("already prepared")


def test_a_class_may_be_absent_from_train_as_in_mvtec_ad(tmp_path):
    rng = np.random.default_rng(2)
    write_images(tmp_path / "images" / "train" / "good", "bright", 6, rng)
    write_images(tmp_path / "images" / "test" / "good", "bright", 2, rng)
    write_images(tmp_path / "images" / "test" / "crack", "striped", 3, rng)
    prepare_folder(tmp_path / "images", "parts", tmp_path / "data", verbose=False)
    ds = load_dataset("parts", tmp_path / "data")
    assert ds.classes == ["crack", "good"]
    assert ds.meta["splits"]["train"]["per_class"] == [0, 6] and ds.meta["splits"]["test"]["per_class"] == [3, 2]
    assert make_split(ds, "one-normal-class", "good").counts["test"] == (2, 3)  # (normal, anomalous)


@pytest.mark.parametrize("make, name, message", [
    (lambda root: None, NAME, "no such folder"),
    (lambda root: write_images(root / "only", "dark", 3, np.random.default_rng(0)), NAME, "at least two class"),
    (lambda root: (write_images(root / "a", "dark", 3, np.random.default_rng(0)),
                   (root / "b").mkdir(), (root / "b" / "notes.txt").write_text("x")), NAME, "holds no readable"),
    (lambda root: [write_images(root / c, c, 3, np.random.default_rng(0)) for c in CLASSES], "mnist",
     "taken by a built-in dataset"),
    (lambda root: write_images(root / "train" / "dark", "dark", 3, np.random.default_rng(0)), NAME,
     "no test/ folder"),
])
def test_bad_folders_fail_before_writing_anything(tmp_path, make, name, message):
    make(tmp_path / "images")
    with pytest.raises(UserError, match=message):
        prepare_folder(tmp_path / "images", name, tmp_path / "data", verbose=False)
    assert not (tmp_path / "data").exists()


def test_split_settings_do_not_apply_to_a_folder_with_its_own_split(own_images, tmp_path):
    for setting in ({"test_fraction": 0.3}, {"seed": 1}):
        with pytest.raises(UserError, match="own train/ and test/ folders: --test-fraction and --seed do not apply"):
            prepare_folder(own_images, NAME, tmp_path / "data", verbose=False, **setting)
    assert not (tmp_path / "data").exists()


def test_a_file_name_that_is_not_utf8_is_read(tmp_path):
    """OpenCV's imread crashed the process (exit 139) on such a name: run as a command, so that a
    crash fails this test instead of ending pytest."""
    rng = np.random.default_rng(3)
    for kind in ("bright", "dark"):
        write_images(tmp_path / "images" / kind, kind, 5, rng)
    odd = tmp_path / "images" / "dark" / os.fsdecode(b"bad\xff\xfe.png")
    odd.write_bytes((tmp_path / "images" / "dark" / "dark_00.png").read_bytes())
    done = command("preprocess.py", "--dataset", "folder", "--path", tmp_path / "images", "--name", "odd", "--data-dir",
                   tmp_path / "data", env={**ENV, "LC_ALL": "C.UTF-8"})
    assert done.returncode == 0, done.stderr
    ds = load_dataset("odd", tmp_path / "data")
    files = ds.meta["files"]["train"] + ds.meta["files"]["test"]
    assert "dark/" + os.fsdecode(b"bad\xff\xfe.png") in files and ds.meta["skipped"] == []
    assert read_image(odd, "rgb").tolist() == read_image(tmp_path / "images" / "dark" / "dark_00.png", "rgb").tolist()


def test_read_image_of_what_is_not_an_image(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "folder.png").mkdir()
    for name in ("empty.png", "text.png", "folder.png", "missing.png"):
        assert read_image(tmp_path / name, "rgb") is None
