"""Training and evaluation throughput of every model preset, against the machine's own GEMM rate,
measured so that a busy machine does not distort the ratios.

    python benchmarks/throughput.py                         # every preset, fp32, batch 256, 10,240 images a pass
    python benchmarks/throughput.py --quick                 # under a minute on 2 CPU cores
    python benchmarks/throughput.py --presets cascade --precisions fp32 bf16 --released-loop --against 55c9d95
    python benchmarks/throughput.py --presets cascade --compile   # torch.compile, its compile time counted

For each preset and precision on 1 x 28 x 28 inputs, with synthetic images resident on the device
(torch.randn, seed 0), it measures
  train img/s   tool.train.train_epoch, the training loop's own batch loop (forward -> backward ->
                Adam step), set up as tool.train.train_model sets it up: channels-last for conv
                models on a CPU, PRECISION's autocast, COMPILE's torch.compile;
  eval img/s    tool.scores.network_outputs (float32, the evaluation pass every score reads);
  MFLOP/img     one training step per image = 3 x forward, the forward counted from the layer
                shapes of one real forward pass: Linear 2*in*out, Conv2d 2*Cin*Cout*kh*kw*Hout*Wout
                / groups, ConvTranspose2d the same on its input positions, a cascade memory unit
                2*N*D (cosine similarity to every slot) + 2*k*D (read-out of the k chosen slots),
                MemAE's memory 2*N*D + 2*N*D (dense read-out); norms, activations, top-k, softmax
                and the optimiser are not counted;
  % of limit     train img/s x train FLOP/img / the GEMM rate of the same precision (256x784 @
                784x512 in float32, or in bfloat16 for bf16).
Every series (each GEMM precision, each preset and precision, and with --released-loop / --against
the comparisons) is timed once per round, round after round, so that a change in machine load hits
them all alike; each figure is the median of the fastest half of its rounds, with the spread
(slowest..fastest) beside it. Absolute figures move with the machine; the ratios measured side by
side in one run are what travels.

  --released-loop  the authors' training loop rebuilt as their script runs it: the released MLP
                   cascade (cascade-released), a DataLoader over a TensorDataset shuffling per
                   epoch, loss.item() after every batch, PyTorch's default (unfused) Adam;
  --against REV    the same presets trained by the code of git revision REV (e.g. the commit before
                   a speed change), each round one pass of REV's code and one of this code, both in
                   fresh subprocesses (benchmarks/_step.py) so neither has an advantage.

It ends with the memory overhead per backbone (plain autoencoder's train img/s over the cascade
model's), the process's peak memory, and, as its last line, one JSON object with every figure.
Targets: cascade-released >= 60% of the limit; memory overhead <= 1.3x for both backbones;
10,000 images evaluated in < 2 s by the MLP presets.
"""
import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from prettytable import PrettyTable  # noqa: E402

from main import DEFAULTS  # noqa: E402
from models import PRESETS, SSL_KINDS, ModelConfig, build_model, count_parameters  # noqa: E402
from models.memory import MemAEMemory, MemoryUnit  # noqa: E402
from tool.errors import UserError, cli  # noqa: E402
from tool.scores import network_outputs  # noqa: E402
from tool.settings import resolve_device  # noqa: E402
from tool.seeding import seed_everything  # noqa: E402
from tool.speed import PRECISIONS, compile_model, uses_channels_last  # noqa: E402
from tool.train import TrainConfig, make_optimizer, train_epoch  # noqa: E402

INPUT_SHAPE = (1, 28, 28)
GEMM_SHAPE = (256, 784, 512)  # (m, k, n): a batch of 256 flattened 28x28 images times a 784 -> 512 layer
GEMM_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
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


class Gemm:
    """GFLOP/s of torch.mm (256x784) @ (784x512) in one precision; one sample per call."""

    def __init__(self, precision, device, seconds=0.05):
        m, k, n = GEMM_SHAPE
        gen = torch.Generator().manual_seed(0)
        dtype = GEMM_DTYPES[precision]
        self.a = torch.randn(m, k, generator=gen).to(device, dtype)
        self.b = torch.randn(k, n, generator=gen).to(device, dtype)
        self.c = torch.empty(m, n, device=device, dtype=dtype)
        self.flop, self.device = 2.0 * m * k * n, device
        for _ in range(3):  # warm-up
            torch.mm(self.a, self.b, out=self.c)
        self.inner = max(1, int(seconds / max(self._seconds(1), 1e-6)))
        self.samples = []

    def _seconds(self, inner):
        synchronize(self.device)
        started = time.perf_counter()
        for _ in range(inner):
            torch.mm(self.a, self.b, out=self.c)
        synchronize(self.device)
        return time.perf_counter() - started

    def sample(self):
        self.samples.append(self.flop * self.inner / self._seconds(self.inner) / 1e9)


def fast_half(values):
    """The median of the fastest half of per-round rates: what the machine gives when nothing
    else runs, without trusting one lucky round."""
    values = sorted(values)
    return statistics.median(values[len(values) // 2:])


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
# What is timed
# ---------------------------------------------------------------------------------------------
class Bench:
    """One preset in one precision, set up as tool.train.train_model sets up a trial."""

    def __init__(self, name, precision, device, compile_=False, ssl=None):
        self.name, self.precision, self.device, self.compile, self.ssl = name, precision, device, compile_, ssl
        self.label = (name + ("" if precision == "fp32" else f" {precision}") + (" compiled" if compile_ else "")
                      + (f" ssl={ssl}" if ssl else ""))
        settings = {**DEFAULTS, "precision": precision, "compile": compile_, "ssl": ssl}
        self.model = build_model(name, INPUT_SHAPE, ModelConfig.from_settings(settings)).to(device)
        self.flops = forward_flops_per_image(self.model, device)
        if uses_channels_last(self.model, device):
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model, TrainConfig.from_settings(settings), device)
        if compile_:
            compile_model(self.model)
        self.train_rates, self.eval_rates, self.first_pass_seconds = [], [], None

    def train_pass(self, images, order, batch_size):
        self.model.train()
        synchronize(self.device)
        started = time.perf_counter()
        loss = float(train_epoch(self.model, self.optimizer, images, order, batch_size, self.precision))  # one sync
        elapsed = time.perf_counter() - started
        if not math.isfinite(loss):
            raise RuntimeError(f"{self.label}: the training loss became {loss}")
        return elapsed

    def eval_pass(self, images):
        synchronize(self.device)
        started = time.perf_counter()
        network_outputs(self.model, images)  # ends with .cpu(): synchronises
        return time.perf_counter() - started


class ReleasedLoop:
    """The authors' training loop as their script runs it, on their MLP cascade."""

    label = "released loop (cascade-released)"

    def __init__(self, device, batch_size):
        from torch.utils.data import DataLoader, TensorDataset

        self.model = build_model("cascade-released", INPUT_SHAPE, ModelConfig.from_settings(DEFAULTS)).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=DEFAULTS["lr"])
        self.flops = forward_flops_per_image(self.model, device)
        self.loader = lambda images: DataLoader(TensorDataset(images), batch_size=batch_size, shuffle=True)
        self.device, self.train_rates = device, []

    def train_pass(self, images, order=None, batch_size=None):
        self.model.train()
        synchronize(self.device)
        started = time.perf_counter()
        for (xb,) in self.loader(images):
            loss = self.model(xb)["loss"]
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            loss.item()  # the released loop reads the loss after every batch
        return time.perf_counter() - started


class Against:
    """The same preset trained by git revision `rev` and by this code, each pass in a fresh
    subprocess (benchmarks/_step.py), one after the other in every round."""

    def __init__(self, rev, tree, preset, precision, images, batch_size, threads):
        self.rev, self.preset, self.precision = rev, preset, precision
        self.label = f"{preset}{'' if precision == 'fp32' else ' ' + precision}: {rev} -> this code"
        self.trees = {"before": tree, "after": REPO}
        self.args = ["--preset", preset, "--images", str(images), "--batch-size", str(batch_size),
                     "--threads", str(threads)]
        self.rates = {"before": [], "after": []}

    def round(self):
        for which, tree in self.trees.items():
            precision = "fp32" if which == "before" else self.precision  # the old code knows no bf16
            done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "_step.py"), "--code", str(tree),
                                   *self.args, "--precision", precision], capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                raise UserError(f"--against {self.rev}: its training step failed: {done.stderr.strip()[-500:]}")
            self.rates[which].append(json.loads(done.stdout.strip().splitlines()[-1])["train_img_per_s"])


def _tree_of(rev, workdir):
    """The files of git revision `rev`, extracted into `workdir`."""
    try:
        archive = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise UserError(f"--against {rev}: not a git revision of this repository "
                        f"({getattr(error, 'stderr', b'').decode().strip() or error}).") from None
    tree = Path(workdir) / rev
    tree.mkdir()
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def peak_rss_mb():
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), metavar="PRESET",
                        help=f"presets to time (default: all: {' '.join(PRESETS)})")
    parser.add_argument("--precisions", nargs="+", default=["fp32"], metavar="P",
                        help=f"training precisions to time: {' '.join(PRECISIONS)} (default: fp32)")
    parser.add_argument("--compile", action="store_true", help="also time each preset with torch.compile")
    parser.add_argument("--ssl", nargs="+", default=[], choices=SSL_KINDS, metavar="KIND",
                        help="also time each preset with these self-supervised tasks (SSL): transforms, transforms-flips, contrastive")
    parser.add_argument("--released-loop", action="store_true", help="also time the authors' training loop")
    parser.add_argument("--against", metavar="REV", help="also time the presets as git revision REV trains them")
    parser.add_argument("--batch-size", type=int, default=256, help="training batch size (default: 256)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: auto)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own, usually the number of cores)")
    parser.add_argument("--images", type=int, default=None,
                        help="synthetic images per timed pass (default: 10,240, i.e. 40 batches; --quick: 2,560)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 6; --quick 3)")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter passes: under a minute on 2 cores")
    args = parser.parse_args(argv)
    unknown = [p for p in args.presets if p not in PRESETS] + [p for p in args.precisions if p not in PRECISIONS]
    if unknown:
        raise UserError(f"unknown preset(s) or precision(s) {', '.join(unknown)}; valid: {', '.join(PRESETS)}; "
                        f"{', '.join(PRECISIONS)}")
    args.presets, args.precisions = list(dict.fromkeys(args.presets)), list(dict.fromkeys(args.precisions))
    args.images = args.images or (2560 if args.quick else 10240)
    args.repeats = args.repeats or (3 if args.quick else 6)
    if args.images < 2 or args.batch_size < 2 or args.repeats < 1 or (args.threads is not None and args.threads < 1):
        raise UserError("--images and --batch-size must be >= 2, --repeats and --threads >= 1")
    return args


def run(argv=None):
    args = parse(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(0)  # as every trial: seeds, deterministic algorithms on
    threads = torch.get_num_threads()
    print(f"device {device}, {threads} thread(s), batch {args.batch_size}, {args.images} images per pass, "
          f"{args.repeats} rounds, torch {torch.__version__}", flush=True)

    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, *INPUT_SHAPE, generator=gen).to(device)
    pixels = torch.randint(0, 256, (args.images, *INPUT_SHAPE), generator=gen, dtype=torch.uint8)  # as trials score
    order = torch.randperm(args.images, generator=gen).to(device)
    gemms = {p: Gemm(p, device) for p in dict.fromkeys(["fp32", *args.precisions])}
    benches = [Bench(name, precision, device, compile_, ssl)
               for name in args.presets for precision in args.precisions
               for compile_ in ((False, True) if args.compile else (False,)) for ssl in (None, *args.ssl)]
    released = ReleasedLoop(device, args.batch_size) if args.released_loop else None
    workdir = tempfile.TemporaryDirectory() if args.against else nullcontext()
    with workdir as tmp:
        tree = _tree_of(args.against, tmp) if args.against else None
        against = [Against(args.against, tree, name, precision, args.images, args.batch_size, threads)
                   for name in args.presets for precision in args.precisions] if args.against else []
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)
        warm = order[: 4 * args.batch_size] if args.quick else order
        for bench in benches:  # warm-up: allocator, kernels, Adam state, and compilation (timed)
            started = time.perf_counter()
            bench.train_pass(images, warm, args.batch_size)
            bench.first_pass_seconds = time.perf_counter() - started
            bench.eval_pass(pixels[: min(len(pixels), 4096)])
        if released:
            released.train_pass(images[: 4 * args.batch_size])
        trained = len(images) - (len(images) % args.batch_size == 1)  # train_epoch skips a final batch of one
        for r in range(args.repeats):  # one sample of every series per round
            for gemm in gemms.values():
                gemm.sample()
            for bench in benches:
                bench.train_rates.append(trained / bench.train_pass(images, order, args.batch_size))
                bench.eval_rates.append(len(pixels) / bench.eval_pass(pixels))
            if released:
                released.train_rates.append(len(images) / released.train_pass(images))
            for comparison in against:
                comparison.round()
            print(f"round {r + 1}/{args.repeats} done", flush=True)
    return report(args, device, threads, gemms, benches, released, against)


def report(args, device, threads, gemms, benches, released, against):
    gemm = {p: round(fast_half(g.samples), 2) for p, g in gemms.items()}
    presets = {}
    for bench in benches:
        train_flops = 3.0 * bench.flops
        train_ips = fast_half(bench.train_rates)
        figures = {
            "train_img_per_s": round(train_ips, 1),
            "train_spread": [round(min(bench.train_rates), 1), round(max(bench.train_rates), 1)],
            "eval_img_per_s": round(fast_half(bench.eval_rates), 1),
            "train_mflop_per_img": round(train_flops / 1e6, 3),
            "fraction_of_limit": round(train_ips * train_flops / (gemm[bench.precision] * 1e9), 4),
            "eval_10k_seconds": round(1e4 / fast_half(bench.eval_rates), 3),
            "parameters": count_parameters(bench.model),
        }
        if bench.compile:
            figures["first_pass_seconds"] = round(bench.first_pass_seconds, 2)
        key = bench.precision + ("+compile" if bench.compile else "") + (f"+ssl={bench.ssl}" if bench.ssl else "")
        presets.setdefault(bench.name, {})[key] = figures

    table = PrettyTable(["preset", "precision", "train img/s", "(slowest..fastest)", "eval img/s", "train MFLOP/img",
                         "% of GEMM limit", "parameters"], align="r")
    table.align["preset"] = "l"
    for name, by_precision in presets.items():
        for key, p in by_precision.items():
            table.add_row([name, key, f"{p['train_img_per_s']:,.0f}",
                           f"{p['train_spread'][0]:,.0f}..{p['train_spread'][1]:,.0f}", f"{p['eval_img_per_s']:,.0f}",
                           f"{p['train_mflop_per_img']:.2f}", f"{100 * p['fraction_of_limit']:.1f}",
                           f"{p['parameters']:,}"])
    print(table)
    for p, g in gemms.items():
        print(f"{p} GEMM {GEMM_SHAPE[0]}x{GEMM_SHAPE[1]} @ {GEMM_SHAPE[1]}x{GEMM_SHAPE[2]}: {gemm[p]:.1f} GFLOP/s "
              f"(median of the fastest half of {len(g.samples)}; slowest {min(g.samples):.1f}, "
              f"fastest {max(g.samples):.1f})")

    ratios = {}
    for name, by_precision in presets.items():
        for key, p in by_precision.items():
            if key != "fp32" and "fp32" in by_precision:
                ratios[f"{name} {key} / fp32"] = round(p["train_img_per_s"] / by_precision["fp32"]["train_img_per_s"], 3)
    if released:
        ips = fast_half(released.train_rates)
        ratios_released = {f"cascade-released {key} / released loop": round(p["train_img_per_s"] / ips, 3)
                           for key, p in presets.get("cascade-released", {}).items()}
        ratios.update(ratios_released)
        released_figures = {"train_img_per_s": round(ips, 1),
                            "train_spread": [round(min(released.train_rates), 1), round(max(released.train_rates), 1)],
                            "fraction_of_limit": round(ips * 3 * released.flops / (gemm["fp32"] * 1e9), 4)}
        print(f"{released.label}: {ips:,.0f} img/s ({min(released.train_rates):,.0f}..{max(released.train_rates):,.0f}), "
              f"{100 * released_figures['fraction_of_limit']:.1f}% of the fp32 GEMM limit")
    against_figures = {}
    for comparison in against:
        before, after = fast_half(comparison.rates["before"]), fast_half(comparison.rates["after"])
        against_figures[comparison.label] = {"before_img_per_s": round(before, 1), "after_img_per_s": round(after, 1),
                                             "ratio": round(after / before, 3)}
        print(f"{comparison.label}: {before:,.0f} -> {after:,.0f} img/s ({after / before:.2f}x; each a fresh "
              f"subprocess, {len(comparison.rates['after'])} rounds)")
    for text, value in ratios.items():
        print(f"{text}: {value:.2f}x")
    for bench in benches:
        if bench.compile:
            eager = presets[bench.name].get(bench.precision, {}).get("train_img_per_s")
            print(f"{bench.label}: first pass (compilation) {bench.first_pass_seconds:.1f} s"
                  + (f"; steady passes {presets[bench.name][bench.precision + '+compile']['train_img_per_s'] / eager:.2f}x"
                     f" eager" if eager else ""))

    overhead = {}
    for key, (plain, cascade) in OVERHEAD_PAIRS.items():
        if "fp32" in presets.get(plain, {}) and "fp32" in presets.get(cascade, {}):
            overhead[key] = round(presets[plain]["fp32"]["train_img_per_s"] / presets[cascade]["fp32"]["train_img_per_s"], 3)
            print(f"memory overhead {key}: {plain} trains {overhead[key]:.2f}x as fast as {cascade}"
                  f"  (target <= {TARGETS['overhead']}x: {'met' if overhead[key] <= TARGETS['overhead'] else 'NOT met'})")
    if "fp32" in presets.get("cascade-released", {}):
        fraction = presets["cascade-released"]["fp32"]["fraction_of_limit"]
        print(f"cascade-released reaches {100 * fraction:.1f}% of the GEMM limit (target >= "
              f"{100 * TARGETS['fraction_released']:.0f}%: {'met' if fraction >= TARGETS['fraction_released'] else 'NOT met'})")
    for name in presets:
        if PRESETS[name][0] == "mlp" and "fp32" in presets[name]:
            seconds = presets[name]["fp32"]["eval_10k_seconds"]
            print(f"{name} evaluates 10,000 images in {seconds:.2f} s (target < {TARGETS['eval_10k_seconds']:g} s: "
                  f"{'met' if seconds < TARGETS['eval_10k_seconds'] else 'NOT met'})")
    peak = {"peak_rss_mb": round(peak_rss_mb(), 1)}
    if device.startswith("cuda"):
        peak["peak_cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    print("peak memory: " + ", ".join(f"{k} {v}" for k, v in peak.items()))
    summary = {"device": device, "threads": threads, "batch_size": args.batch_size, "images": args.images,
               "repeats": args.repeats, "torch": torch.__version__, "gemm_gflops": gemm, "presets": presets,
               "ratios": ratios, "memory_overhead": overhead, **peak}
    if released:
        summary["released_loop"] = released_figures
    if against:
        summary["against"] = {"revision": args.against, "presets": against_figures}
    print(json.dumps(summary), flush=True)
    return summary


main = cli(run)

if __name__ == "__main__":
    main(sys.argv[1:])
