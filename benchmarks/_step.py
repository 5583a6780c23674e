"""Timed training passes of one preset by the code in --code (this repository at any revision), in
a fresh process; throughput.py --against runs it for an old revision and for this code alike.

    python benchmarks/_step.py --code DIR --preset cascade --images 10240 --threads 1 [--precision bf16]

Prints one JSON line: {"train_img_per_s": the faster of two timed passes after a warm-up}.
--profile N: then also print, to stderr, torch.profiler's table of the N operators that took the
most CPU time themselves in one more pass (where a training step's time goes).
"""
import argparse
import json
import sys
import time

INPUT_SHAPE = (1, 28, 28)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", required=True, help="the repository tree whose training loop is timed")
    parser.add_argument("--preset", required=True)
    parser.add_argument("--images", type=int, default=10240)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print the N costliest operators")
    args = parser.parse_args()
    sys.path.insert(0, args.code)

    import torch

    import tool.train as train
    from models import build_model

    torch.set_num_threads(args.threads)
    try:  # where this code keeps it; older revisions had it in tool/train.py
        from tool.seeding import seed_everything
    except ImportError:
        seed_everything = train.seed_everything
    seed_everything(0)
    try:  # settings from main.py's constants (this code)
        from main import DEFAULTS
        from models import ModelConfig

        settings = {**DEFAULTS, "precision": args.precision}
        model = build_model(args.preset, INPUT_SHAPE, ModelConfig.from_settings(settings))
        config = train.TrainConfig.from_settings(settings)
    except ImportError:  # revisions before ModelConfig: the presets' and TrainConfig's own defaults
        model = build_model(args.preset, INPUT_SHAPE)
        config = train.TrainConfig()
    if getattr(train, "uses_channels_last", lambda *a: False)(model, "cpu"):
        model.to(memory_format=torch.channels_last)
    optimizer = train.make_optimizer(model, config, "cpu")
    precision = {"precision": args.precision} if hasattr(train, "autocast") else {}  # older code: fp32 only
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, *INPUT_SHAPE, generator=gen)
    order = torch.randperm(args.images, generator=gen)
    model.train()
    seconds = []
    for i in range(3):  # a warm-up pass (4 batches), then two timed passes
        part = order[: 4 * args.batch_size] if i == 0 else order
        started = time.perf_counter()
        float(train.train_epoch(model, optimizer, images, part, args.batch_size, **precision))
        seconds.append(time.perf_counter() - started)
    print(json.dumps({"train_img_per_s": args.images / min(seconds[1:])}))
    if args.profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            float(train.train_epoch(model, optimizer, images, order, args.batch_size, **precision))
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile), file=sys.stderr)


if __name__ == "__main__":
    main()
