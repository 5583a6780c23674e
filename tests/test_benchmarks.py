"""Tests of benchmarks/throughput.py: quick mode prints its JSON and FLOP counts; unknown presets refused."""
import json
import subprocess
import sys

import pytest

from tool.io import REPO


def test_throughput_benchmark_quick_mode_prints_its_json(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--quick", "--presets", "ae-mlp",
         "cascade-released", "--precisions", "fp32", "bf16", "--released-loop", "--images", "512", "--repeats", "2",
         "--device", "cpu", "--threads", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)  # any working directory
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"device", "threads", "gemm_gflops", "presets", "ratios", "memory_overhead", "peak_rss_mb",
            "released_loop"} <= set(summary)
    assert summary["device"] == "cpu" and summary["threads"] == 1
    assert set(summary["gemm_gflops"]) == {"fp32", "bf16"} and min(summary["gemm_gflops"].values()) > 0
    assert set(summary["presets"]) == {"ae-mlp", "cascade-released"}
    for by_precision in summary["presets"].values():
        assert set(by_precision) == {"fp32", "bf16"}
        for figures in by_precision.values():
            assert {"train_img_per_s", "train_spread", "eval_img_per_s", "train_mflop_per_img",
                    "fraction_of_limit"} <= set(figures)
            slowest, fastest = figures["train_spread"]
            assert 0 < slowest <= figures["train_img_per_s"] <= fastest and figures["eval_img_per_s"] > 0
    # the MLP's matmuls, counted from the layer shapes: 784-512-256-128 and back, x 3 for training
    mlp = 2 * 2 * (784 * 512 + 512 * 256 + 256 * 128)
    assert summary["presets"]["ae-mlp"]["fp32"]["train_mflop_per_img"] == pytest.approx(3 * mlp / 1e6, rel=1e-3)
    memory = 2 * 128 * (50 + 1000) + 2 * 128 * (15 + 5)  # similarity to every slot + read-out of k slots
    assert summary["presets"]["cascade-released"]["fp32"]["train_mflop_per_img"] == pytest.approx(
        3 * (mlp + memory) / 1e6, rel=1e-3)
    # each precision's share of the limit is against the GEMM of that precision
    for precision in ("fp32", "bf16"):
        figures = summary["presets"]["ae-mlp"][precision]
        assert figures["fraction_of_limit"] == pytest.approx(
            figures["train_img_per_s"] * figures["train_mflop_per_img"] * 1e6 / (summary["gemm_gflops"][precision] * 1e9),
            rel=1e-2)
    assert set(summary["memory_overhead"]) == {"mlp-released"}
    assert summary["released_loop"]["train_img_per_s"] > 0
    assert set(summary["ratios"]) == {"ae-mlp bf16 / fp32", "cascade-released bf16 / fp32",
                                      "cascade-released fp32 / released loop", "cascade-released bf16 / released loop"}


def test_step_harness_times_this_code(tmp_path):
    """benchmarks/_step.py, which --against runs for an old revision and for this code alike."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "_step.py"), "--code", str(REPO), "--preset",
                           "ae-mlp", "--images", "512", "--threads", "1"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["train_img_per_s"] > 0


def test_throughput_benchmark_refuses_an_unknown_preset(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--presets", "nope"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown preset" in done.stderr and "Traceback" not in done.stderr


def test_the_gpu_check_runs_its_steps_on_the_cpu_path(data_dir, tmp_path):
    """benchmarks/gpu_check.py --device cpu: every step a person with a GPU runs, on a CPU; its
    report holds the four runs and four passed checks, and a second run into the same folder is
    refused (nothing is overwritten)."""
    out = tmp_path / "check"
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--dataset", "digits",
                           "--epochs", "2", "--data-dir", str(data_dir), "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    report = (out / "gpu_check.md").read_text()
    for run in ("cpu-fp32", "cpu-fp32-again", "cpu-bf16", "reference-cpu-fp32"):
        assert f"| {run} |" in report
    assert report.count("- PASS: ") == 4 and "FAIL" not in report
    again = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--dataset", "digits",
                            "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "is not an empty folder" in again.stderr


def test_throughput_times_a_preset_with_its_self_supervised_task_beside_it(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--quick", "--presets", "ae-mlp", "--ssl",
         "transforms", "--images", "256", "--repeats", "1", "--device", "cpu", "--threads", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    timed = json.loads(done.stdout.strip().splitlines()[-1])["presets"]["ae-mlp"]
    assert set(timed) == {"fp32", "fp32+ssl=transforms"}
    assert timed["fp32+ssl=transforms"]["parameters"] > timed["fp32"]["parameters"]  # the rotation head
