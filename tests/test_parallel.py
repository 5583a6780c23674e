"""Tests of tool/parallel.py: a parallel sweep (--jobs 2) gives the scores of a serial one."""
import json
from pathlib import Path

import pytest
import torch

import main
from conftest import results_of
from tool.errors import UserError

SMALL = ["--dataset", "digits", "--classes", "0", "1", "--seeds", "0", "--epochs", "3", "--min-steps", "0", "--threads", "1",
         "--draw-figures", "false"]


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """main.run sets torch's thread count for its trials; give the next test the count it had."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_jobs_2_gives_the_same_results_as_jobs_1(data_dir, tmp_path):
    common = ["--data-dir", str(data_dir), *SMALL]
    serial = main.run([*common, "--jobs", "1", "--run-dir", str(tmp_path / "serial")])
    parallel = main.run([*common, "--jobs", "2", "--run-dir", str(tmp_path / "parallel")])
    a, b = results_of(serial), results_of(parallel)
    assert sorted(a) == sorted(b) == ["class0_seed0", "class1_seed0"]
    for trial in a:
        for key in ("metrics", "test_scores", "targets", "thresholds", "best_val_loss", "best_epoch"):
            assert a[trial][key] == b[trial][key], f"{trial}: {key} differs between --jobs 1 and --jobs 2"
        assert a[trial]["history"]["val_loss"] == b[trial]["history"]["val_loss"]
        for run_dir in (serial, parallel):  # the thread count a trial ran with is recorded beside it
            trial_config = json.loads((Path(run_dir) / trial / "config.json").read_text())
            assert trial_config["config"]["threads"] == 1
            assert trial_config["environment"]["torch_threads"] == 1

    # the thread count changes float sums, so a folder refuses trials computed with another one
    with pytest.raises(UserError, match="threads"):
        main.run([*common, "--threads", "2", "--run-dir", str(serial)])
