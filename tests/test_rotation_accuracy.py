"""scripts/rotation_accuracy.py: the share of each rotation a trial's head names right, per class."""
import sys

import pytest
import torch

from conftest import REPO, command, one_error, run_main
from models.ssl import rotations
from tool.checkpoints import load_trial_model
from tool.data.datasets import load_dataset, scale_images

sys.path.insert(0, str(REPO / "scripts"))
import rotation_accuracy  # noqa: E402


@pytest.fixture(scope="module")
def ssl_trial(data_dir, tmp_path_factory):
    run = run_main(data_dir, tmp_path_factory.mktemp("ssl"), "--classes", "3", "--seeds", "0", "--epochs", "2",
                   "--ssl", "transforms")
    return run / "class3_seed0"


def test_counts_what_the_head_names_image_by_image(ssl_trial, data_dir):
    _, model = load_trial_model(ssl_trial, "cpu")
    images = load_dataset("digits", data_dir).train_images[:37]
    right, loss = torch.zeros(4), 0.0
    with torch.inference_mode():
        for image in images:  # one image at a time: no batching to agree with by construction
            logits = model.ssl.head(model.encoder(rotations(scale_images(image[None], "cpu"))).float())
            right += (logits.argmax(dim=1) == torch.arange(4)).float()
            loss += float(torch.nn.functional.cross_entropy(logits, torch.arange(4), reduction="sum"))
    got_right, got_loss = rotation_accuracy.accuracy(model, images)
    assert got_right.tolist() == pytest.approx((right / 37).tolist())
    assert got_loss == pytest.approx(loss / (4 * 37), rel=1e-4) and got_loss > 0


def test_prints_a_row_per_class_and_names_the_anomalous_one(ssl_trial, capsys):
    rotation_accuracy.run([str(ssl_trial), "--images", "20"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 10 and "(anomalous)" in rows[3] and sum("(anomalous)" in row for row in rows) == 1
    for row in rows:
        values = [float(cell) for cell in row.strip("|").split("|")[1:]]
        assert len(values) == 6 and all(0 <= v <= 100 for v in values[:5]) and values[5] > 0
        assert values[4] == pytest.approx(sum(values[:4]) / 4, abs=0.06)


def test_refuses_what_it_cannot_read(finished_run, tmp_path):
    one_error(command("scripts/rotation_accuracy.py", finished_run / "class0_seed0"), "without a self-supervised task")
    one_error(command("scripts/rotation_accuracy.py", tmp_path), "not a trained trial folder")
    one_error(command("scripts/rotation_accuracy.py", finished_run / "class0_seed0", "--images", "0"),
              "--images must be at least 1")
