"""Tests of tool/parallel.py: a parallel sweep (--jobs 2) gives the scores of a serial one."""
import json
import multiprocessing
import time
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


def _trial_failing_for_class_0(config, ds, c, seed, run_dir, device, log):
    if c == 0:
        raise UserError("class 0 cannot be trained")
    time.sleep(600)


def test_a_failed_trial_ends_the_sweep_with_its_error_and_stops_the_other_workers(data_dir, tmp_path):
    """A trial's error in a worker reaches the command as itself, and the worker still training
    another trial is stopped then, not waited for."""
    from tool import parallel

    config = {"jobs": 2, "threads": 1, "device": "cpu", "dataset": "digits", "data_dir": str(data_dir)}
    start = time.monotonic()
    with pytest.raises(UserError, match="class 0 cannot be trained"):
        parallel.run_trials(_trial_failing_for_class_0, config, None, [(0, 0), (1, 0)], tmp_path, "cpu")
    assert time.monotonic() - start < 60 and not multiprocessing.active_children()
