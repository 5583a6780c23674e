"""The GPU path, checked end to end in minutes on a machine with one GPU (or more):

    python benchmarks/gpu_check.py                       # --device cuda, Fashion-MNIST class 0, 3 epochs
    python benchmarks/gpu_check.py --device cpu --dataset digits --epochs 2   # the same steps on a CPU (tests)

1. One trial of `cascade` (class 0 as the anomaly, seed 0) on the device in fp32, again in fp32
   (the same seed twice must give the same scores, bit for bit), and in bf16; the same trial on
   the CPU in fp32. Training throughput of each (training images x epochs / training seconds),
   and the device's over the CPU's.
2. AUROC of recon and fused-lof of each: fp32 on the device and on the CPU within TOLERANCE
   (float sums run in another order on another processor, and training amplifies that).
3. The device's fp32 checkpoint scored on the CPU with score.py --device cpu: every test image's
   recon within 1e-3 (relative) of what evaluation on the device stored.
4. JOBS = 0 (auto) runs one trial per GPU: the number of trials at a time main.py would choose.

Writes OUT/gpu_check.md (the table and each check's verdict) and exits 1 if a check fails. The
trials run as main.py runs them (main.run), in OUT/runs/.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import main  # noqa: E402
from tool.errors import UserError, cli  # noqa: E402
from tool.io import REPO, atomic_write_text  # noqa: E402
from tool.parallel import trial_jobs  # noqa: E402
from tool.provenance import environment  # noqa: E402
from tool.results import read_results, read_scores  # noqa: E402
from tool.settings import resolve_device  # noqa: E402

TOLERANCE = 0.02  # AUROC, device fp32 against CPU fp32, after a few epochs (measured: see the README, Speed)


def trial(out, name, dataset, epochs, device, precision, threads, data_dir=None):
    """One main.py trial (class 0, seed 0) into OUT/runs/NAME; its results.json and folder."""
    run_dir = out / "runs" / name
    started = time.perf_counter()
    main.run([*(["--data-dir", str(data_dir)] if data_dir else []), "--dataset", dataset, "--classes", "0", "--seeds", "0", "--epochs", str(epochs), "--min-steps", "0",
              "--patience-steps", "0", "--precision", precision, "--device", device, "--jobs", "1",
              "--threads", str(threads), "--draw-figures", "false", "--run-dir", str(run_dir)])
    folder = run_dir / "class0_seed0"
    results = read_results(folder)
    images = results["counts"]["train"][0] * results["epochs_trained"]
    return {"name": name, "device": device, "precision": precision, "folder": folder, "results": results,
            "train_img_s": images / results["train_seconds"], "seconds": time.perf_counter() - started,
            "auroc": {s: 100 * results["metrics"][s]["auroc"] for s in ("recon", "fused-lof")}}


def score_on_cpu(folder, out):
    """score.py --device cpu on the trial's test images written as PNGs: their recon scores."""
    import cv2

    from tool.data.datasets import load_dataset

    config = json.loads((folder / "config.json").read_text())
    ds = load_dataset(config["config"]["dataset"], config["config"]["data_dir"])
    pngs = out / "pngs"
    pngs.mkdir(parents=True, exist_ok=True)
    picked = list(range(0, len(ds.test_images), max(1, len(ds.test_images) // 50)))[:50]
    for i in picked:
        cv2.imwrite(str(pngs / f"{i:05d}.png"), ds.test_images[i].numpy().transpose(1, 2, 0))
    csv = out / "cpu_scores.csv"
    csv.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "score.py", "--trial", str(folder), str(pngs), "--score", "recon",
                           "--device", "cpu", "--output", str(csv)], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"score.py --device cpu failed: {done.stderr.strip()[-500:]}")
    rows = [line.split(",") for line in csv.read_text().splitlines()[1:]]
    stored = read_scores(folder)[1]["recon"]  # float16, as evaluation on the device kept them
    return np.array([float(r[1]) for r in rows]), stored[picked]


def check(args):
    from tool.data.datasets import check_dataset_name
    from tool.io import make_dir

    device = resolve_device(args.device)
    if args.epochs < 1 or args.cpu_threads < 0:
        raise UserError(f"--epochs must be at least 1 and --cpu-threads at least 0, got {args.epochs}, {args.cpu_threads}")
    check_dataset_name(args.dataset, args.data_dir)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder: give a new --out folder")
    make_dir(out)
    name = device.replace(":", "")
    runs = [trial(out, f"{name}-fp32", args.dataset, args.epochs, device, "fp32", 1, args.data_dir),
            trial(out, f"{name}-fp32-again", args.dataset, args.epochs, device, "fp32", 1, args.data_dir),
            trial(out, f"{name}-bf16", args.dataset, args.epochs, device, "bf16", 1, args.data_dir),
            trial(out, "reference-cpu-fp32", args.dataset, args.epochs, "cpu", "fp32", args.cpu_threads, args.data_dir)]
    first, again, bf16, cpu = runs
    checks = []
    a, b = read_scores(first["folder"])[1], read_scores(again["folder"])[1]
    same = set(a) == set(b) and all(np.array_equal(a[n], b[n]) for n in a) and first["results"]["metrics"] == \
        again["results"]["metrics"]
    checks.append(("the same seed twice on the device: the same scores, bit for bit", same))
    gap = max(abs(first["auroc"][s] - cpu["auroc"][s]) for s in first["auroc"])
    checks.append((f"fp32 on the device against the CPU: AUROC within {100 * TOLERANCE:g} points (largest gap "
                   f"{gap:.2f})", gap <= 100 * TOLERANCE))
    cpu_scores, stored = score_on_cpu(first["folder"], out)
    rel = float(np.max(np.abs(cpu_scores - stored) / np.maximum(np.abs(stored), 1e-6)))
    checks.append((f"the device's checkpoint scored by score.py --device cpu: recon within 1e-3 of evaluation's "
                   f"(largest relative gap {rel:.1e}, float16 storage included)", rel <= 1e-3))
    config = {**main.DEFAULTS, "jobs": 0, "device": "auto"}
    auto = trial_jobs(config, 10, device)
    import torch

    gpus = torch.cuda.device_count() if device.startswith("cuda") else 0
    checks.append((f"JOBS = 0 on {device}: {auto} trial(s) at a time for 10 trials "
                   f"({gpus} GPU(s) here: one per GPU)" if gpus else f"JOBS = 0 on {device}: {auto} trial(s) at a time",
                   auto == gpus if gpus else auto >= 1))
    env = environment()
    lines = [f"# GPU check: {device}, {args.dataset} class 0, seed 0, {args.epochs} epochs", "",
             f"{env.get('gpu') or env.get('cpu')}; torch {env['torch']}, CUDA {env['cuda']}; commit "
             f"{env['git_commit']}; source_sha256 {env['source_sha256'][:16]}", "",
             "| run | device | precision | train img/s | x CPU | recon AUROC | fused-lof AUROC | wall s |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(f"| {r['name']} | {r['device']} | {r['precision']} | {r['train_img_s']:,.0f} | "
                     f"{r['train_img_s'] / cpu['train_img_s']:.2f} | {r['auroc']['recon']:.2f} | "
                     f"{r['auroc']['fused-lof']:.2f} | {r['seconds']:.1f} |")
    lines += ["", f"CPU: {args.cpu_threads or 'all'} torch thread(s). bf16 on the device trains at "
                  f"{bf16['train_img_s'] / first['train_img_s']:.2f}x its fp32.", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {text}" for text, ok in checks]
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "gpu_check.md", text)
    print(text)
    if not all(ok for _, ok in checks):
        sys.exit(1)
    return text


def run(argv=None):
    from tool.flags import OneLineParser

    parser = OneLineParser(prog="benchmarks/gpu_check.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="the device to check (default cuda)")
    parser.add_argument("--dataset", default="fmnist", help="a prepared dataset (default fmnist)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each trial (default 3)")
    parser.add_argument("--cpu-threads", type=int, default=0, help="torch threads of the CPU trial (0: all cores)")
    parser.add_argument("--data-dir", help="the datasets folder (default: datasets/ beside main.py)")
    parser.add_argument("--out", default="runs/gpu-check", help="a new folder for the trials and gpu_check.md")
    return check(parser.parse_args(argv))


if __name__ == "__main__":
    cli(run)(sys.argv[1:])
