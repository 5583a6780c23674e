"""Neighbourhood class leakage: how much each class, held out as the anomaly, mixes with the other
classes (a diagnostic of the class-split protocol itself, not of a detector).

    python main.py --leakage RUN_DIR     # per class: in pixels, and in the run's own latent space

When the held-out class sits among the normal classes, no detector can rank it above them, and
which direction a score should point can depend on the class (Ascarate et al., "Testing the Test:
Score-Direction Instability in Class-Split Anomaly Detection", arXiv 2606.02601, 2026, who
introduced the diagnostic). This is our implementation of it, from that paper's description (its
exact formula was not available to us):

    leakage(c) = share of class c among the k nearest neighbours of the other classes' images
                 / share of class c among all images

computed on LEAKAGE_PER_CLASS training images of every class (drawn with seed 0), Euclidean
distances, k = LEAKAGE_K. About 1: class c is spread among the others as if at random; 0: no image
of another class has an image of c among its neighbours. The latent space is the encoder's code
of the run's trial that held class c out (its first seed): the geometry that model saw. Only
training images are used; the test split is not looked at.
"""
from pathlib import Path

import numpy as np
import torch

from tool.data.datasets import class_label, load_dataset, scale_images
from tool.errors import UserError
from tool.scores import network_outputs
from tool.io import atomic_write_json, read_json
from tool.results import load_results
from tool.checkpoints import load_trial_model
from tool.runs import check_own_files, check_run_trials, read_run_config

LEAKAGE_PER_CLASS = 500
LEAKAGE_K = 10


def class_leakage(features, labels, c, k=LEAKAGE_K):
    """Leakage of class `c` among `features` (N x P) with `labels` (N): see the top of this file."""
    features = torch.as_tensor(features, dtype=torch.float32)
    labels = torch.as_tensor(labels)
    others = labels != c
    distances = torch.cdist(features[others], features)
    distances[torch.arange(int(others.sum())), torch.nonzero(others).squeeze(1)] = float("inf")  # not itself
    neighbours = distances.topk(k, dim=1, largest=False).indices
    share_among_neighbours = (labels[neighbours] == c).float().mean()
    return float(share_among_neighbours / (labels == c).float().mean())


def sample(ds, per_class=LEAKAGE_PER_CLASS, seed=0):
    """Indices of `per_class` training images of every class (all of a smaller class), drawn with `seed`."""
    rng = np.random.default_rng(seed)
    labels = ds.train_labels.numpy()
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class]
                                   for c in range(len(ds.classes))]))


def run_leakage(run_dir, device="cpu"):
    """Per class of the run's dataset, the leakage in pixels and in the latent space of the trial
    that held it out; written to RUN_DIR/leakage.json and printed; returns {class: {...}}."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    check_own_files(run_dir)  # leakage.json is written into it
    if config["protocol"] != "one-anomalous-class":
        raise UserError("--leakage measures held-out anomaly classes: it needs a run of the one-anomalous-class "
                        "protocol.")
    ds = load_dataset(config["dataset"], config["data_dir"])
    check_run_trials(run_dir, ds)
    chosen = torch.from_numpy(sample(ds))
    images, labels = ds.train_images[chosen], ds.train_labels[chosen]
    pixels = scale_images(images).flatten(1)
    results = load_results(run_dir)
    first = {}
    for c, s in sorted(results):
        first.setdefault(c, s)
    table = {}
    for c in range(len(ds.classes)):
        row = {"class_name": ds.classes[c], "pixels": round(class_leakage(pixels, labels, c), 4)}
        folder = run_dir / f"class{c}_seed{first.get(c)}"
        if c in first and (folder / "best.pt").is_file():
            codes = network_outputs(load_trial_model(folder, device, (config["dataset"], ds.shape))[1], images)["code"]
            row.update(latent=round(class_leakage(codes, labels, c), 4), latent_seed=first[c])
        table[c] = row
        print(f"class {class_label(c, ds.classes[c])}: leakage pixels {row['pixels']:.3f}"
              + (f", latent {row['latent']:.3f}" if "latent" in row else ""))
    atomic_write_json(run_dir / "leakage.json", {
        "what": f"neighbourhood class leakage: share of class c among the {LEAKAGE_K} nearest neighbours of the other "
                f"classes' images over c's share of all images ({LEAKAGE_PER_CLASS} training images per class, "
                f"seed 0; latent: the encoder's code of the trial that held c out)",
        "k": LEAKAGE_K, "per_class": LEAKAGE_PER_CLASS, "classes": {str(c): row for c, row in table.items()}})
    print(f"written: {run_dir / 'leakage.json'}")
    return table


def read_leakage(run_dir):
    """{class: {"pixels": ..., "latent": ...}} of a run folder's leakage.json, or {} when it has none."""
    path = Path(run_dir) / "leakage.json"
    what_to_do = f"Delete it and run python main.py --leakage {run_dir} again."
    if not path.is_file():
        return {}
    try:
        rows = {int(c): row for c, row in read_json(path, what_to_do)["classes"].items()}
        if not all(isinstance(row, dict) and all(type(row.get(k, 0.0)) in (int, float) for k in ("pixels", "latent"))
                   for row in rows.values()):
            raise ValueError("a row")
        return rows
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
        raise UserError(f"{path} is corrupt: not the leakage of each class. {what_to_do}") from None
