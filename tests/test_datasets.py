"""Tests of tool/data/datasets.py: pixel scaling, corrupt processed files, a data folder that cannot be written."""
import json

import pytest
import torch

from conftest import command, leftovers, main_fails, one_error
from tool.data.datasets import load_dataset, processed_dir, scale_images
from tool.errors import UserError


def test_scale_images_maps_0_255_to_minus_one_one():
    scaled = scale_images(torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(1, 1, 1, 3))
    assert scaled.dtype == torch.float32
    assert scaled.flatten().tolist() == pytest.approx([-1.0, -0.6, 1.0])


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
    ("train.pt", write_garbage, "train.pt is not a dataset file this code wrote, or it is truncated or corrupt"),
    ("test.pt", truncate, "test.pt is not a dataset file this code wrote, or it is truncated or corrupt"),
    ("meta.json", truncate, "meta.json is truncated or corrupt"),
    ("meta.json", drop_classes, "meta.json is corrupt: it names no classes"),
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


def test_preparing_again_on_a_full_disk_keeps_the_old_dataset(tmp_path):
    """Issue 12: --force removed meta.json first, then failed on a full disk: the dataset was gone."""
    assert command("preprocess.py", "--dataset", "digits", "--data-dir", tmp_path).returncode == 0
    folder = processed_dir("digits", tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    done = command("preprocess.py", "--dataset", "digits", "--force", "--data-dir", tmp_path, fault="full-disk",
                   root=tmp_path)
    one_error(done, f"cannot write {folder} (no space left on the device): free some space or choose another folder; "
                    f"nothing in it was changed")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert load_dataset("digits", tmp_path).shape == (1, 8, 8)
    assert leftovers(tmp_path) == [] and sorted(p.name for p in (tmp_path / "digits").iterdir()) == ["processed"]


def test_preparing_for_the_first_time_on_a_full_disk_leaves_no_empty_folder(tmp_path):
    """Issue 12 (4): a failed first preparation left the empty folders it made (datasets/digits/)."""
    data_dir = tmp_path / "new" / "datasets"
    done = command("preprocess.py", "--dataset", "digits", "--data-dir", data_dir, fault="full-disk", root=tmp_path)
    one_error(done, f"cannot write {processed_dir('digits', data_dir)} (no space left on the device)")
    assert list(tmp_path.iterdir()) == []


def test_preparing_again_replaces_the_whole_folder(tmp_path, make_prepared):
    name = make_prepared(tmp_path, n_train_per_class=3)
    (processed_dir(name, tmp_path) / "stale.pt").write_bytes(b"from an older version")
    make_prepared(tmp_path, n_train_per_class=4)
    assert sorted(p.name for p in processed_dir(name, tmp_path).iterdir()) == ["meta.json", "test.pt", "train.pt"]
    assert len(load_dataset(name, tmp_path).train_labels) == 40 and leftovers(tmp_path) == []
