"""Candidate fusions of a run's scores, per class, from its results files alone (a tuning split only).

    python scripts/compare_fusions.py runs/fmnist-tune/cascade/RUN
    python scripts/compare_fusions.py RUN --fusion recon,memory,transform --fusion transform,views-knn
    python scripts/compare_fusions.py RUN --floor -1   # each standardised member counted as at least -1

Each candidate is a sum of member scores, each standardised by its mean and spread on the trial's
normal validation images (results.json "validation_stats"), exactly as tool/scores.py fuses (with
--floor, each member counted as at least that many spreads from its mean, as fused-ssl does): so a candidate
can be judged from scores.npz without the checkpoints. Prints the AUROC (%) of every score the
trials hold and of every candidate, per class and their mean. It refuses a run that is not on a
tuning split: a fusion is chosen on training images only, never on a test split.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tool.errors import UserError, cli  # noqa: E402
from tool.evaluation import compute_metrics  # noqa: E402
from tool.results import load_results, read_scores  # noqa: E402
from tool.runs import read_run_config  # noqa: E402
from tool.scores import FUSIONS, SCORES, fused_sum, standardised  # noqa: E402
from tool.flags import OneLineParser  # noqa: E402

CANDIDATES = [  # decided before the tuning run was scored (results/tuning.md)
    ("recon", "memory", "transform", "views-knn"),
    ("recon", "memory", "latent-lof", "transform", "views-knn"),
    ("transform", "views-knn"),
    ("recon", "memory", "transform", "views-knn", "views-lof"),
    ("recon", "latent-knn", "latent-lof", "memory", "transform"),
    ("recon", "latent-knn", "latent-lof", "memory", "transform", "views-knn", "views-lof", "csi"),
]


def table(run_dir, candidates, floor=None):
    """{row name: {class: AUROC %}} of every score and candidate, over the run's finished trials."""
    unknown = sorted({m for members in candidates for m in members} - set(SCORES))
    if unknown or any(not members for members in candidates):
        raise UserError(f"--fusion: {', '.join(unknown) or 'an empty candidate'} is not a score of tool/scores.py "
                        f"({', '.join(SCORES)})")
    config = read_run_config(run_dir)
    if not config["dataset"].endswith("-tune"):
        raise UserError(f"{run_dir} is a run on {config['dataset']}, not on a tuning split: fusions are chosen on "
                        f"training images only (python preprocess.py --tuning-split {config['dataset']}).")
    rows, trials = {}, sorted(load_results(run_dir).items())
    if not trials:
        raise UserError(f"{run_dir} holds no finished trial (no class*_seed*/results.json).")
    for (c, seed), results in trials:
        folder = Path(run_dir) / f"class{c}_seed{seed}"
        targets, scores = read_scores(folder, results)
        try:
            for name in scores:
                rows.setdefault(name, {})[c] = 100 * compute_metrics(scores[name], targets)["auroc"]
            for members in candidates:
                if all(m in scores and m in results["validation_stats"] for m in members):
                    with np.errstate(over="ignore", invalid="ignore"):
                        fused = fused_sum([standardised(results["validation_stats"], m, scores[m]) for m in members],
                                          floor)
                    name = " + ".join(members) + ("" if floor is None else f" (floor {floor:g})")
                    rows.setdefault(name, {})[c] = 100 * compute_metrics(fused, targets)["auroc"]
        except ValueError as error:  # scores that are not finite, or a test split of one kind of image
            raise UserError(f"{folder}: {error}; score the trial again (python main.py --eval-only "
                            f"{Path(run_dir)}).") from None
    return rows


def run(argv=None):
    parser = OneLineParser(prog="scripts/compare_fusions.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--fusion", action="append", metavar="A,B,...", help="a candidate (default: CANDIDATES)")
    parser.add_argument("--floor", type=float, default=None, metavar="Z",
                        help="count each candidate's standardised members as at least Z (default: as they are)")
    args = parser.parse_args(argv)
    if args.floor is not None and not np.isfinite(args.floor):
        raise UserError(f"--floor must be a finite number, got {args.floor}")
    candidates = [tuple(f.split(",")) for f in args.fusion] if args.fusion else CANDIDATES
    rows = table(args.run_dir, candidates, args.floor)
    classes = sorted({c for row in rows.values() for c in row})
    print("| score | " + " | ".join(map(str, classes)) + " | mean |")
    print("|---|" + "---:|" * (len(classes) + 1))
    for name, row in rows.items():
        cells = [f"{row[c]:.1f}" if c in row else "-" for c in classes]
        mean = f"{np.mean(list(row.values())):.2f}" if len(row) == len(classes) else "-"
        print(f"| {name}{' (fused)' if name in FUSIONS else ''} | " + " | ".join(cells) + f" | {mean} |")


if __name__ == "__main__":
    cli(run)(sys.argv[1:])
