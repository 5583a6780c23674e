"""Tests of tool/datasets.py: pixel scaling, corrupt processed files, a data folder that cannot be written."""
import json

import pytest
import torch

from conftest import main_fails
from tool.datasets import load_dataset, processed_dir, scale_images
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
