"""Training and evaluation throughput of every model preset, against the machine's own GEMM rate.

    python benchmarks/throughput.py                       # every preset, batch 256, 10,240 images per pass
    python benchmarks/throughput.py --quick               # under a minute on 2 CPU cores
    python benchmarks/throughput.py --presets cascade-released ae-mlp --threads 1 --device cpu

For each preset on 1 x 28 x 28 inputs, with synthetic images resident on the device
(torch.randn, seed 0), it measures
  train img/s   tool.train.train_epoch, the training loop's own per-epoch batch loop (forward ->
                out["loss"].backward() -> Adam step, batches taken by index from a device tensor,
                loss summed on the device), after a warm-up pass; median of the timed passes;
  eval img/s    tool.evaluation.anomaly_scores (inference_mode, batches of 4096); median;
  MFLOP/img     one training step per image = 3 x forward, the forward counted from the layer
                shapes of one real forward pass: Linear 2*in*out, Conv2d 2*Cin*Cout*kh*kw*Hout*Wout
                / groups, ConvTranspose2d the same on its input positions, a cascade memory unit
                2*N*D (cosine similarity to every slot) + 2*k*D (read-out of the k chosen slots),
                MemAE's memory 2*N*D + 2*N*D (dense read-out); norms, activations, top-k, softmax
                and the optimiser are not counted;
  % of limit     train img/s x train FLOP/img / (float32 GEMM rate of 256x784 @ 784x512, measured
                in the same run, at its start and at its end, median of all repeats).
The presets are timed round-robin (pass r of every preset, then pass r + 1), so a change in
machine load hits every preset alike and the ratios between presets stay fair.

It ends with the memory overhead per backbone (plain autoencoder's train img/s over the cascade
model's), the process's peak memory, and, as its last line, one JSON object with every figure.

Reference (issue 6, a 2-core CPU machine): the authors' released training loop with its MLP cascade
trains ~7,700 img/s; the GEMM ran at ~186 GFLOP/s; 7.6 MFLOP per image -> ~31% of the limit.
Targets: cascade-released >= 60% of the limit; memory overhead <= 1.3x for both backbones;
10,000 images evaluated in < 2 s by the MLP presets.
"""
import argparse
import json
import math
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from prettytable import PrettyTable  # noqa: E402

from main import DEFAULTS  # noqa: E402
from models import PRESETS, ModelConfig, build_model, count_parameters  # noqa: E402
from models.memory import MemAEMemory, MemoryUnit  # noqa: E402
from tool.settings import resolve_device  # noqa: E402
from tool.errors import UserError, cli  # noqa: E402
from tool.evaluation import anomaly_scores  # noqa: E402
from tool.train import TrainConfig, make_optimizer, seed_everything, train_epoch  # noqa: E402

INPUT_SHAPE = (1, 28, 28)
GEMM_SHAPE = (256, 784, 512)  # (m, k, n): a batch of 256 flattened 28x28 images times a 784 -> 512 layer
OVERHEAD_PAIRS = {  # name: (plain autoencoder, cascade model with the same backbone)
    "conv": ("ae", "cascade"),
    "mlp": ("ae-mlp", "cascade-mlp"),
    "mlp-released": ("ae-mlp", "cascade-released"),
}
TARGETS = {"fraction_released": 0.60, "overhead": 1.3, "eval_10k_seconds": 2.0}


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------
def synchronize(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def gemm_samples(device, repeats, seconds_per_repeat=0.05):
    """GFLOP/s of float32 torch.mm (256x784) @ (784x512), one sample per repeat."""
    m, k, n = GEMM_SHAPE
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(device)
    b = torch.randn(k, n, generator=gen).to(device)
    c = torch.empty(m, n, device=device)
    flop = 2.0 * m * k * n
    for _ in range(3):  # warm-up
        torch.mm(a, b, out=c)
    synchronize(device)
    started = time.perf_counter()
    torch.mm(a, b, out=c)
    synchronize(device)
    inner = max(1, int(seconds_per_repeat / max(time.perf_counter() - started, 1e-6)))
    samples = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=c)
        synchronize(device)
        samples.append(flop * inner / (time.perf_counter() - started) / 1e9)
    return samples


# ---------------------------------------------------------------------------------------------
# FLOPs from the layer shapes
# ---------------------------------------------------------------------------------------------
def forward_flops_per_image(model, device, batch=8):
    """Forward FLOPs per image, counted from the shapes one real forward pass sees (see the top)."""
    counts = []

    def hook(module, inputs, output):
        x = inputs[0]
        per = x.shape[0]
        if isinstance(module, nn.Linear):
            counts.append(2 * module.in_features * module.out_features * (x.numel() // per // module.in_features))
        elif isinstance(module, nn.Conv2d):
            cout, cin_g, kh, kw = module.weight.shape
            counts.append(2 * cin_g * cout * kh * kw * output[0, 0].numel())
        elif isinstance(module, nn.ConvTranspose2d):
            cin, cout_g, kh, kw = module.weight.shape
            counts.append(2 * cin * cout_g * kh * kw * x[0, 0].numel())
        elif isinstance(module, MemoryUnit):
            counts.append(2 * module.n_slots * module.slot_dim + 2 * module.top_k * module.slot_dim)
        elif isinstance(module, MemAEMemory):
            counts.append(2 * module.n_slots * module.slot_dim * 2)

    kinds = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, MemoryUnit, MemAEMemory)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(torch.randn(batch, *INPUT_SHAPE, generator=torch.Generator().manual_seed(1)).to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return float(sum(counts))


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------
class Bench:
    """One preset: its model, optimiser and timings."""

    def __init__(self, name, device):
        self.name = name
        self.model = build_model(name, INPUT_SHAPE, ModelConfig.from_settings(DEFAULTS)).to(device)
        self.optimizer = make_optimizer(self.model, TrainConfig.from_settings(DEFAULTS), device)  # the training loop's own Adam
        self.flops = forward_flops_per_image(self.model, device)
        self.train_seconds, self.eval_seconds = [], []


def train_pass(bench, images, order, batch_size, device):
    bench.model.train()
    synchronize(device)
    started = time.perf_counter()
    loss_sum = train_epoch(bench.model, bench.optimizer, images, order, batch_size)
    loss = float(loss_sum)  # the loop's own once-per-epoch host synchronisation
    elapsed = time.perf_counter() - started
    if not math.isfinite(loss):
        raise RuntimeError(f"{bench.name}: the training loss became {loss}")
    return elapsed


def eval_pass(bench, images, device):
    synchronize(device)
    started = time.perf_counter()
    anomaly_scores(bench.model, images)  # ends with .cpu(): synchronises
    return time.perf_counter() - started


def peak_rss_mb():
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), metavar="PRESET",
                        help=f"presets to time (default: all: {' '.join(PRESETS)})")
    parser.add_argument("--batch-size", type=int, default=256, help="training batch size (default: 256)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: auto)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own, usually the number of cores)")
    parser.add_argument("--images", type=int, default=None,
                        help="synthetic images per timed pass (default: 10,240, i.e. 40 batches; --quick: 2,560)")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes per preset (default 5; --quick 3)")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter passes: under a minute on 2 cores")
    args = parser.parse_args(argv)
    unknown = [p for p in args.presets if p not in PRESETS]
    if unknown:
        raise UserError(f"unknown preset(s) {', '.join(unknown)}; valid: {', '.join(PRESETS)}")
    args.presets = list(dict.fromkeys(args.presets))
    args.images = args.images or (2560 if args.quick else 10240)
    args.repeats = args.repeats or (3 if args.quick else 5)
    if args.images < 2 or args.batch_size < 2 or args.repeats < 1 or (args.threads is not None and args.threads < 1):
        raise UserError("--images and --batch-size must be >= 2, --repeats and --threads >= 1")
    return args


def run(argv=None):
    args = parse(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(0)  # as every training unit: seeds, deterministic algorithms on
    threads = torch.get_num_threads()
    print(f"device {device}, {threads} thread(s), batch {args.batch_size}, {args.images} images per pass, "
          f"{args.repeats} timed passes, torch {torch.__version__}", flush=True)

    gemm = gemm_samples(device, 5 if args.quick else 10)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, *INPUT_SHAPE, generator=gen).to(device)
    order = torch.randperm(args.images, generator=gen).to(device)
    benches = [Bench(name, device) for name in args.presets]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)

    warm = order[: 4 * args.batch_size] if args.quick else order
    for bench in benches:  # warm-up: allocator, kernels, Adam state
        train_pass(bench, images, warm, args.batch_size, device)
        eval_pass(bench, images[: min(len(images), 4096)], device)
    for r in range(args.repeats):  # round-robin: every preset sees the same machine load
        for bench in benches:
            bench.train_seconds.append(train_pass(bench, images, order, args.batch_size, device))
            bench.eval_seconds.append(eval_pass(bench, images, device))
        print(f"pass {r + 1}/{args.repeats} done", flush=True)
    gemm += gemm_samples(device, 5 if args.quick else 10)
    gemm_gflops = statistics.median(gemm)

    trained = len(images) - (len(images) % args.batch_size == 1)  # train_epoch skips a final batch of one
    presets = {}
    for bench in benches:
        train_ips = trained / statistics.median(bench.train_seconds)
        eval_ips = len(images) / statistics.median(bench.eval_seconds)
        train_flops = 3.0 * bench.flops
        presets[bench.name] = {
            "train_img_per_s": round(train_ips, 1),
            "eval_img_per_s": round(eval_ips, 1),
            "train_mflop_per_img": round(train_flops / 1e6, 3),
            "fraction_of_limit": round(train_ips * train_flops / (gemm_gflops * 1e9), 4),
            "eval_10k_seconds": round(1e4 / eval_ips, 3),
            "parameters": count_parameters(bench.model),
        }
    overhead = {}
    for key, (plain, cascade) in OVERHEAD_PAIRS.items():
        if plain in presets and cascade in presets:
            overhead[key] = round(presets[plain]["train_img_per_s"] / presets[cascade]["train_img_per_s"], 3)

    table = PrettyTable(["preset", "train img/s", "eval img/s", "eval 10k (s)", "train MFLOP/img",
                         "train GFLOP/s", "% of GEMM limit", "parameters"], align="r")
    table.align["preset"] = "l"
    for name, p in presets.items():
        table.add_row([name, f"{p['train_img_per_s']:,.0f}", f"{p['eval_img_per_s']:,.0f}",
                       f"{p['eval_10k_seconds']:.2f}", f"{p['train_mflop_per_img']:.2f}",
                       f"{p['train_img_per_s'] * p['train_mflop_per_img'] / 1e3:.1f}",
                       f"{100 * p['fraction_of_limit']:.1f}", f"{p['parameters']:,}"])
    print(table)
    print(f"float32 GEMM {GEMM_SHAPE[0]}x{GEMM_SHAPE[1]} @ {GEMM_SHAPE[1]}x{GEMM_SHAPE[2]}: "
          f"{gemm_gflops:.1f} GFLOP/s (median of {len(gemm)}; min {min(gemm):.1f}, max {max(gemm):.1f})")
    for key, value in overhead.items():
        plain, cascade = OVERHEAD_PAIRS[key]
        print(f"memory overhead {key}: {plain} trains {value:.2f}x as fast as {cascade}"
              f"  (target <= {TARGETS['overhead']}x: {'met' if value <= TARGETS['overhead'] else 'NOT met'})")
    if "cascade-released" in presets:
        fraction = presets["cascade-released"]["fraction_of_limit"]
        print(f"cascade-released reaches {100 * fraction:.1f}% of the GEMM limit (target >= "
              f"{100 * TARGETS['fraction_released']:.0f}%: {'met' if fraction >= TARGETS['fraction_released'] else 'NOT met'})")
    for name in presets:
        if PRESETS[name][0] == "mlp":
            seconds = presets[name]["eval_10k_seconds"]
            print(f"{name} evaluates 10,000 images in {seconds:.2f} s (target < {TARGETS['eval_10k_seconds']:g} s: "
                  f"{'met' if seconds < TARGETS['eval_10k_seconds'] else 'NOT met'})")
    peak = {"peak_rss_mb": round(peak_rss_mb(), 1)}
    if device.startswith("cuda"):
        peak["peak_cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    print("peak memory: " + ", ".join(f"{k} {v}" for k, v in peak.items()))
    summary = {"device": device, "threads": threads, "batch_size": args.batch_size, "images": args.images,
               "repeats": args.repeats, "torch": torch.__version__, "gemm_gflops": round(gemm_gflops, 2),
               "presets": presets, "memory_overhead": overhead, **peak}
    print(json.dumps(summary), flush=True)
    return summary


main = cli(run)

if __name__ == "__main__":
    main(sys.argv[1:])
