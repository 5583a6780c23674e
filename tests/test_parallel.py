"""Parallel sweeps (--jobs) give the scores of a serial sweep; the throughput benchmark runs."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main
from tool.prepare import prepare
from tool.errors import UserError

REPO = Path(__file__).resolve().parent.parent
SMALL = ["--dataset", "digits", "--classes", "0", "1", "--seeds", "0", "--epochs", "3", "--threads", "1",
         "--draw-figures", "false"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    prepare("digits", root, verbose=False)
    return root


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """main.run sets torch's thread count for its units; give the next test the count it had."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def results_of(run_dir):
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(Path(run_dir).glob("class*_seed*/results.json"))}


def test_jobs_2_gives_the_same_results_as_jobs_1(data_dir, tmp_path):
    common = ["--data-dir", str(data_dir), *SMALL]
    serial = main.run([*common, "--jobs", "1", "--run-dir", str(tmp_path / "serial")])
    parallel = main.run([*common, "--jobs", "2", "--run-dir", str(tmp_path / "parallel")])
    a, b = results_of(serial), results_of(parallel)
    assert sorted(a) == sorted(b) == ["class0_seed0", "class1_seed0"]
    for unit in a:
        for key in ("metrics", "scores", "targets", "threshold", "best_val_loss", "best_epoch"):
            assert a[unit][key] == b[unit][key], f"{unit}: {key} differs between --jobs 1 and --jobs 2"
        assert [h["val_loss"] for h in a[unit]["history"]] == [h["val_loss"] for h in b[unit]["history"]]
        for run_dir in (serial, parallel):  # the thread count a unit ran with is recorded beside it
            unit_config = json.loads((Path(run_dir) / unit / "config.json").read_text())
            assert unit_config["config"]["threads"] == 1
            assert unit_config["environment"]["torch_threads"] == 1

    # the thread count changes float sums, so a folder refuses units computed with another one
    with pytest.raises(UserError, match="threads"):
        main.run([*common, "--threads", "2", "--run-dir", str(serial)])


def test_throughput_benchmark_quick_mode_prints_its_json(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--quick", "--presets", "ae-mlp",
         "cascade-released", "--images", "512", "--repeats", "1", "--device", "cpu", "--threads", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)  # any working directory
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"device", "threads", "gemm_gflops", "presets", "memory_overhead", "peak_rss_mb"} <= set(summary)
    assert summary["device"] == "cpu" and summary["threads"] == 1 and summary["gemm_gflops"] > 0
    assert set(summary["presets"]) == {"ae-mlp", "cascade-released"}
    for figures in summary["presets"].values():
        assert {"train_img_per_s", "eval_img_per_s", "train_mflop_per_img", "fraction_of_limit"} <= set(figures)
        assert figures["train_img_per_s"] > 0 and figures["eval_img_per_s"] > 0
    # the MLP's matmuls, counted from the layer shapes: 784-512-256-128 and back, x 3 for training
    mlp = 2 * 2 * (784 * 512 + 512 * 256 + 256 * 128)
    assert summary["presets"]["ae-mlp"]["train_mflop_per_img"] == pytest.approx(3 * mlp / 1e6, rel=1e-3)
    memory = 2 * 128 * (50 + 1000) + 2 * 128 * (15 + 5)  # similarity to every slot + read-out of k slots
    assert summary["presets"]["cascade-released"]["train_mflop_per_img"] == pytest.approx(3 * (mlp + memory) / 1e6,
                                                                                          rel=1e-3)
    assert set(summary["memory_overhead"]) == {"mlp-released"}


def test_throughput_benchmark_refuses_an_unknown_preset(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--presets", "nope"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown preset" in done.stderr and "Traceback" not in done.stderr
