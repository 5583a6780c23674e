"""Ablation on a tuning split: test-time forgetting as an ensemble (results/tuning.md, "Ideas tried").

Scores every finished trial of a run folder of a `-tune` dataset with its trained best.pt, as
`--eval-only` does, plus three experimental scores that keep each memory stage forgetting at test
time (a fresh random set of floor(forget_rate x N) slots per draw, as in training):

    tt-recon   the reconstruction error averaged over DRAWS draws
    tt-std     its spread over the draws (does the memory hesitate on anomalies?)
    fused-tt   the fused score with tt-recon in place of recon

and prints the mean AUROC of each over the trials. It refuses a dataset that is not a tuning split:
an idea is judged on training images only, never on a test split.

    python scripts/ablate_scores.py runs/fmnist-tune/cascade/RUN [--draws 8]
"""
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from main import DEFAULTS  # noqa: E402
from models.memory import MemoryUnit  # noqa: E402
from tool.data.datasets import load_dataset, scale_images  # noqa: E402
from tool.errors import UserError, cli  # noqa: E402
from tool.data.protocol import make_split  # noqa: E402
from tool.evaluation import batches  # noqa: E402
from tool.checkpoints import load_trial_model  # noqa: E402
from tool.runs import is_finished, read_run_config  # noqa: E402
from tool.scores import Scorer, validation_stats, standardised  # noqa: E402
from tool.flags import OneLineParser  # noqa: E402


@torch.inference_mode()
def forgetting_draws(model, images, draws, seed):
    """draws x N reconstruction errors, each draw with the memory stages forgetting as in training
    (everything else in eval mode: BatchNorm uses its running statistics)."""
    model.eval()
    units = [m for m in model.modules() if isinstance(m, MemoryUnit)]
    torch.manual_seed(seed)
    try:
        for unit in units:
            unit.training = True
        return torch.stack([torch.cat([torch.linalg.vector_norm((model(xb)["recon"] - xb).flatten(1), dim=1)
                                       for xb in batches(images)]) for _ in range(draws)]).double().numpy()
    finally:
        model.eval()


def ablate(run_dir, draws):
    config = read_run_config(run_dir)
    if not config["dataset"].endswith("-tune"):
        raise UserError(f"{run_dir} is a run on {config['dataset']}, not on a tuning split: ideas are judged on "
                        f"training images only (python preprocess.py --tuning-split {config['dataset']}).")
    torch.set_num_threads(1)
    ds = load_dataset(config["dataset"], config["data_dir"])
    rows = {}
    for folder in sorted(p for p in run_dir.glob("class*_seed*") if is_finished(p)):
        trial, model = load_trial_model(folder, "cpu")
        settings = {**DEFAULTS, **trial["config"]}
        split = make_split(ds, settings["protocol"], trial["class"], settings["val_fraction"], trial["seed"])
        scorer = Scorer.fit(model, split.train, split.val, trial["seed"], settings["threshold_percentile"])
        val, test = scorer.scores(split.val, base_only=True), scorer.scores(split.test, base_only=True)
        for scores, images in ((val, split.val), (test, split.test)):
            d = forgetting_draws(model, scale_images(images, "cpu"), draws, trial["seed"])
            scores["tt-recon"], scores["tt-std"] = d.mean(axis=0), d.std(axis=0)
        for name, parts in {"fused": ["recon", "latent-knn", "memory"],
                            "fused-tt": ["tt-recon", "latent-knn", "memory"]}.items():
            parts = [p for p in parts if p in val]
            stats = validation_stats({p: val[p] for p in parts})
            val[name], test[name] = (sum(standardised(stats, p, scores[p]) for p in parts) for scores in (val, test))
        targets = split.test_targets.numpy()
        rows[folder.name] = {name: 100 * roc_auc_score(targets, values) for name, values in test.items()}
        print(folder.name, "  ".join(f"{k} {v:.2f}" for k, v in rows[folder.name].items()), flush=True)
    if not rows:
        raise UserError(f"{run_dir} holds no finished trial.")
    names = list(next(iter(rows.values())))
    print(f"mean of {len(rows)} trials", "  ".join(f"{k} {np.mean([r[k] for r in rows.values()]):.2f}" for k in names))


@cli
def main(argv=None):
    parser = OneLineParser(prog="scripts/ablate_scores.py", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--draws", type=int, default=8, help="forgetting draws per image (default 8)")
    args = parser.parse_args(argv)
    if args.draws < 1:
        raise UserError(f"--draws must be at least 1, got {args.draws}")
    if not (args.run_dir / "config.json").is_file():
        raise UserError(f"{args.run_dir} is not a run folder (no config.json).")
    ablate(args.run_dir, args.draws)


if __name__ == "__main__":
    main()
