"""Wall-clock time of a real Fashion-MNIST sweep on this machine: two trials of 2 epochs each, run
two at a time as main.py runs them on 2 cores, extrapolated to 10 classes x 1 seed at 20 epochs;
with --against REV, the same for git revision REV's code, alternated round by round.

    python benchmarks/sweep_time.py                                   # cascade, this code
    python benchmarks/sweep_time.py --presets cascade --precisions fp32 bf16 --against 55c9d95

Each measurement is `python main.py --dataset fmnist --classes 0 1 --seeds 0 --epochs 2 --jobs 2
--threads 1` in a fresh process. From the trials' results.json: the second epoch's seconds (the
first one warms up) are an epoch's, the rest of a trial's time (split, scoring, writing) is its
overhead; a sweep = 10 classes / 2 at a time x (EPOCHS x epoch + overhead). Needs the prepared
Fashion-MNIST (python preprocess.py --dataset fmnist).
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from prettytable import PrettyTable  # noqa: E402

from benchmarks.throughput import _tree_of  # noqa: E402
from tool.data.datasets import DATA_ROOT, is_prepared  # noqa: E402
from tool.errors import UserError, cli  # noqa: E402


def history_column(history, name):
    """One quantity of a trial's training history per epoch, in the layout of today's results.json
    (columns) or of the older code --against runs (a list of epochs)."""
    if isinstance(history, dict):
        return list(history.get(name, []))
    return [epoch.get(name) for epoch in history]


def measure(tree, preset, precision, data_dir, workdir, epochs):
    """(seconds of one steady epoch, overhead seconds of a trial): the mean over the two trials."""
    out = Path(tempfile.mkdtemp(dir=workdir))
    extra = [] if precision is None else ["--precision", precision]
    if "MIN_STEPS" in (Path(tree) / "main.py").read_text():  # 2 epochs stay 2 (a real sweep's 20 exceed MIN_STEPS)
        extra += ["--min-steps", "0"]
    command = [sys.executable, "main.py", "--dataset", "fmnist", "--model", preset, "--classes", "0", "1",
               "--seeds", "0", "--epochs", str(epochs), "--jobs", "2", "--threads", "1", "--draw-figures", "false",
               "--output-dir", str(out), "--data-dir", str(data_dir), *extra]
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise UserError(f"{' '.join(command)} failed in {tree}: {done.stderr.strip()[-500:]}")
    trials = [json.loads(p.read_text()) for p in out.rglob("results.json")]
    epoch = statistics.mean(history_column(t["history"], "seconds")[-1] for t in trials)  # either layout (--against)
    overhead = statistics.mean(t["total_seconds"] - sum(history_column(t["history"], "seconds")) for t in trials)
    return epoch, overhead


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["cascade"])
    parser.add_argument("--precisions", nargs="+", default=["fp32"], help="this code's precisions (fp32, bf16)")
    parser.add_argument("--against", metavar="REV", help="also time git revision REV's code (fp32)")
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each (default 2: the faster counts)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the extrapolated sweep (default 20)")
    parser.add_argument("--data-dir", default=None, help="datasets folder (default: datasets/)")
    args = parser.parse_args(argv)
    if not is_prepared("fmnist", args.data_dir):
        raise UserError(f"Fashion-MNIST is not prepared in {args.data_dir or DATA_ROOT}: "
                        f"python preprocess.py --dataset fmnist")
    if args.rounds < 1 or args.epochs < 1:
        raise UserError("--rounds and --epochs must be >= 1")
    return args


def run(argv=None):
    args = parse(argv)
    data_dir = Path(args.data_dir or DATA_ROOT).resolve()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        series = [("this code", REPO, p) for p in args.precisions]
        if args.against:
            series.insert(0, (args.against, _tree_of(args.against, workdir), None))
        for preset in args.presets:
            found = {name + (f" {p}" if p else ""): [] for name, _, p in series}
            for r in range(args.rounds):  # alternated: every series sees the same machine load
                for name, tree, precision in series:
                    found[name + (f" {precision}" if precision else "")].append(
                        measure(tree, preset, precision, data_dir, workdir, 2))
                print(f"{preset}: round {r + 1}/{args.rounds} done", flush=True)
            for label, samples in found.items():
                epoch, overhead = min(samples)
                sweep = 10 / 2 * (args.epochs * epoch + overhead)
                rows.append({"preset": preset, "code": label, "epoch_seconds": round(epoch, 2),
                             "trial_overhead_seconds": round(overhead, 2), "sweep_minutes": round(sweep / 60, 1)})
    table = PrettyTable(["preset", "code", "s / epoch (2 at a time)", "trial overhead (s)",
                         f"10 classes x {args.epochs} epochs (min)"], align="r")
    for row in rows:
        table.add_row([row["preset"], row["code"], f"{row['epoch_seconds']:.1f}", f"{row['trial_overhead_seconds']:.1f}",
                       f"{row['sweep_minutes']:.1f}"])
    print(table)
    print(json.dumps({"epochs": args.epochs, "rows": rows}))
    return rows


main = cli(run)

if __name__ == "__main__":
    main(sys.argv[1:])
