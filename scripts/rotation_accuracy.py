"""How well a trial's head recognises the transformations (rotations) of training images, per class.

    python scripts/rotation_accuracy.py runs/mnist/cascade/RUN/class8_seed0
    python scripts/rotation_accuracy.py TRIAL --images 1000 --data-dir datasets

A diagnostic of a trial trained with a self-supervised task (SSL = "transforms", "transforms-flips"
or "contrastive"): for up to --images training images of every class, the normal ones and the
trial's anomalous one alike, the share of each of the task's K transformations the head names
right. A task that the head solves as well on the class it never saw as on the normal ones is
solved from cues every class shares (the slant of a stroke, where the ink sits), not from what
the class looks like, and then its code and its `transform` score tell that class apart poorly.
The labels only group the images here; the script chooses nothing, and it reads training images
only.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.ssl import nll, transform_names, transformed  # noqa: E402
from tool.checkpoints import load_trial_model  # noqa: E402
from tool.data.datasets import load_dataset, scale_images  # noqa: E402
from tool.errors import UserError, cli  # noqa: E402
from tool.evaluation import batches  # noqa: E402
from tool.flags import OneLineParser  # noqa: E402


@torch.inference_mode()
def accuracy(model, images):
    """(the share of `images` (uint8, N x C x H x W) whose k-th transformation the head names k,
    per k; the task's loss on them: the head's cross-entropy, averaged over images and transformations)."""
    k = model.ssl.n_transforms
    right, loss = torch.zeros(k), 0.0
    targets = torch.arange(k)
    for xb in batches(images, 256):
        logits = model.ssl.head(model.encoder(transformed(scale_images(xb, "cpu"), k)).float())
        right += (logits.argmax(dim=1).view(k, -1) == targets.unsqueeze(1)).sum(dim=1)
        loss += float(nll(logits, targets.repeat_interleave(len(xb))).sum())
    return right / len(images), loss / (k * len(images))


def run(argv=None):
    parser = OneLineParser(prog="scripts/rotation_accuracy.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trial", type=Path, help="a trial folder (class<c>_seed<s>) trained with a task")
    parser.add_argument("--images", type=int, default=1000, help="training images per class (default 1000)")
    parser.add_argument("--data-dir", default=None, help="where the dataset is prepared (default: the run's)")
    args = parser.parse_args(argv)
    if args.images < 1:
        raise UserError(f"--images must be at least 1, got {args.images}")
    trial, model = load_trial_model(args.trial, "cpu")
    if getattr(model, "ssl", None) is None:
        raise UserError(f"{args.trial} was trained without a self-supervised task: it has no transformation head.")
    config = trial["config"]
    ds = load_dataset(config["dataset"], args.data_dir or config["data_dir"])
    print(f"{args.trial}: {config['dataset']}, anomalous class {trial['class']}, task {config['ssl']}; "
          f"% of each transformation named right, on up to {args.images} training images per class")
    names = transform_names(model.ssl.n_transforms)
    print("| class | " + " | ".join(names) + " | mean | task loss |")
    print("|---|" + "---:|" * (len(names) + 2))
    for c, name in enumerate(ds.classes):
        images = ds.train_images[ds.train_labels == c][: args.images]
        if len(images) == 0:
            continue
        right, loss = accuracy(model, images)
        label = f"{c} {name}" + (" (anomalous)" if c == trial["class"] else "")
        print(f"| {label} | " + " | ".join(f"{a:.1f}" for a in (100 * right).tolist())
              + f" | {100 * right.mean():.1f} | {loss:.2g} |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    cli(run)(sys.argv[1:])
