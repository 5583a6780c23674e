"""Score new images with a trained trial: the anomaly score and a verdict at the run's threshold.

    python score.py --checkpoint runs/mine/cascade/20261128-120000/class0_seed0 photo.png more_photos/
    python score.py --checkpoint RUN_DIR/class0_seed0 images/ --output scores.csv --device cpu

Every image gets the preprocessing the trial's dataset recorded (folder datasets: size, channels,
interpolation; see tool/folder.py; built-in datasets: none, the image must already have the
model's channels), then training's pixel scaling, and the score evaluation computes (--score,
default the run's SCORE: recon, the L2 norm of the reconstruction error; latent-knn, with the
normal training codes the trial kept in bank.pt; latent-lof, the local outlier factor among those
codes; memory; fused and fused-lof, standardised with the trial's validation statistics; for an
MLP encoder hidden-knn, hidden-lof and fused-hidden, with the hidden features kept in bank.pt). An image is "anomalous" when its score is above the trial's validation
threshold for that score (results.json: thresholds, a percentile of the scores of normal
validation images). Folders are searched recursively for PNG, JPEG and BMP files.

The table is printed and written as CSV (path, anomaly_score, threshold, verdict): to --output,
which must not exist yet, or by default to scores.csv in the trial folder (scores-1.csv, ... when
that is taken). Nothing is ever overwritten.
"""
import argparse
import csv
import io
import itertools
import sys
from pathlib import Path

import numpy as np
import torch
from prettytable import PrettyTable

from tool.settings import OneLineParser, resolve_device
from tool.datasets import scale_images
from tool.errors import UserError, cli
from tool.evaluation import FUSIONS, fit_lof, fusions, image_scores
from tool.folder import INTERPOLATION, INTERPOLATIONS, list_images, read_image, shown, to_chw
from tool.io import check_target, create_new_file
from tool.results import read_results
from tool.runs import load_trial_model, trial_bank


def parse_args(argv=None):
    parser = OneLineParser(prog="score.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, metavar="UNIT_DIR",
                        help="a finished trial of a run: RUN_DIR/class<c>_seed<s> (holds best.pt and results.json)")
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders of images")
    parser.add_argument("--output", metavar="CSV", help="write the scores here (must not exist; default: "
                                                       "scores.csv in the trial folder, or the next free scores-N.csv)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    parser.add_argument("--score", help="the score to give (default: the run's SCORE): recon, latent-knn, latent-lof, memory, fused, fused-lof; MLP encoders also hidden-knn, hidden-lof, fused-hidden")
    return parser.parse_args(argv)


def open_trial(folder, device):
    """(trial config, model in eval mode, results) of a finished trial folder; else a UserError."""
    folder = Path(folder)
    if not (folder / "results.json").is_file():
        trials = sorted(p.name for p in folder.glob("class*_seed*") if p.is_dir())
        hint = f" It is a run folder: give one of its trials, e.g. {folder / trials[0]}." if trials else ""
        raise UserError(f"{folder} is not a finished trial of a run (no results.json): give a RUN_DIR/class<c>_seed<s> "
                        f"folder made by main.py.{hint}")
    trial, model = load_trial_model(folder, device)
    results = read_results(folder)
    preprocessing = trial.get("preprocessing")
    if not (preprocessing is None or isinstance(preprocessing, dict) and isinstance(preprocessing.get("grayscale"), bool)
            and isinstance(preprocessing.get("interpolation"), str)) or "recon" not in results["thresholds"]:
        raise UserError(f"{folder}: its config.json or results.json is damaged (no usable preprocessing or recon "
                        f"threshold). Train the trial again.")
    return trial, model, results


def find_images(inputs):
    """Image files from files and folders (recursively, sorted), in the order given."""
    files = []
    for given in map(Path, inputs):
        if given.is_dir():
            skipped = []
            found = list_images(given, skipped)
            if not found:
                raise UserError(f"{given}: no PNG, JPEG or BMP image in this folder.")
            if skipped:
                print(f"{shown(given)}: ignored {len(skipped)} file(s) that are not PNG, JPEG or BMP")
            files += found
        elif given.is_file():
            files.append(given)
        else:
            raise UserError(f"{given}: no such file or folder.")
    return files


def load_images(files, input_shape, preprocessing):
    """uint8 (N, C, H, W) for the model: read, channels checked, resized as training's images were."""
    channels, height, width = input_shape
    if preprocessing:  # a folder dataset: read exactly as preprocess.py read its images
        mode, interpolation = ("grayscale" if preprocessing["grayscale"] else "rgb"), preprocessing["interpolation"]
        if interpolation not in INTERPOLATIONS:
            raise UserError(f"the trial's dataset was resized with '{interpolation}' interpolation, which this code "
                            f"does not know ({', '.join(INTERPOLATIONS)}).")
    else:  # a built-in dataset: its images are the model's size already; nothing to convert
        mode, interpolation = "as-stored", INTERPOLATION
    images, resized = [], []
    for path in files:
        image = read_image(path, mode)
        if image is None:
            raise UserError(f"{path}: cannot be read as an image (corrupt, or not a PNG, JPEG or BMP file).")
        if image.shape[2] != channels:
            raise UserError(f"{path} has {image.shape[2]} channel(s) but the model takes {channels}, and its "
                            f"dataset's preprocessing records no conversion: convert the image to "
                            f"{'grayscale' if channels == 1 else 'RGB'} first.")
        if image.shape[:2] != (height, width):
            resized.append(f"{path} ({image.shape[0]} x {image.shape[1]})")
        images.append(to_chw(image, (height, width), interpolation))
    if resized:
        print(f"warning: {len(resized)} image(s) resized to the model's {height} x {width} ({interpolation} "
              f"interpolation): {', '.join(resized)}", file=sys.stderr)
    return torch.from_numpy(np.stack(images))


def check_output(given):
    """--output checked before any image is scored: a file name whose file does not exist yet."""
    if given is None:
        return None
    path = Path(given)
    if not given.strip() or given.endswith(("/", "\\")) or path.is_dir():
        raise UserError(f"--output {given!r} is not a file name: give the CSV file to write, e.g. "
                        f"{Path(given.strip() or '.') / 'scores.csv'}")
    if path.exists() or path.is_symlink():
        raise UserError(f"{path} exists; scores never overwrite a file: give another --output.")
    check_target(path)
    return path


def write_csv(data, output, trial_folder):
    """Write the CSV to `output` (which must still not exist), or to the first free
    scores[-N].csv in the trial folder; the name is taken in one step (create_new_file), so two
    score.py runs at once never overwrite each other's file. Returns the path written."""
    if output is not None:
        try:
            create_new_file(output, data)
        except FileExistsError:
            raise UserError(f"{output} appeared while the images were scored; scores never overwrite a file: "
                            f"give another --output.") from None
        return output
    for i in itertools.count():
        path = Path(trial_folder) / ("scores.csv" if i == 0 else f"scores-{i}.csv")
        try:
            create_new_file(path, data)
            return path
        except FileExistsError:
            continue


def run(argv=None):
    """Everything score.py does; returns (CSV path, rows [(path, score, verdict)])."""
    args = parse_args(argv)
    device = resolve_device(args.device)
    trial, model, results = open_trial(args.checkpoint, device)
    name = args.score or trial["config"].get("score", "recon")
    if name not in results["metrics"]:
        raise UserError(f"--score {name}: this trial has the scores {', '.join(results['metrics'])}.")
    files = find_images(args.images)
    output = check_output(args.output)
    images = load_images(files, trial["input_shape"], trial.get("preprocessing"))
    parts = FUSIONS[name][0] if name in FUSIONS else (name,)  # what the score is made of; recon, memory: no bank.pt
    needs_bank, needs_hidden = (any(part.startswith(prefix) for part in parts) for prefix in ("latent-", "hidden-"))
    bank = trial_bank(args.checkpoint, device, width=trial["config"].get("latent_dim")) if needs_bank else None
    hidden = trial_bank(args.checkpoint, device, width=getattr(model.encoder, "hidden_width", None),
                        part="hidden") if needs_hidden else None
    lof = fit_lof(bank) if "latent-lof" in parts else None  # a few seconds: only when asked for
    hidden_lof = fit_lof(hidden) if "hidden-lof" in parts else None
    scores = image_scores(model, scale_images(images, device), bank, lof, hidden, hidden_lof)  # as evaluation
    if name in FUSIONS:
        scores.update(fusions(results["fusion"], scores))
    if name not in scores:  # results.json names the score, but what it needs is gone (bank.pt, its statistics)
        raise UserError(f"{args.checkpoint}: cannot give {name} (it needs bank.pt and the score's validation "
                        f"statistics in results.json, and one of them is missing). "
                        f"Score the trial again: python main.py --eval-only {Path(args.checkpoint).parent}")
    threshold = results["thresholds"][name]
    rows = [(str(path), float(value), "anomalous" if value > threshold else "normal")
            for path, value in zip(files, scores[name])]

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "anomaly_score", "threshold", "verdict"])
    writer.writerows([path, f"{value:.6f}", f"{threshold:.6f}", verdict] for path, value, verdict in rows)
    # written before anything is printed: a folder that cannot take it is one error, not a table and a crash;
    # a file name that is not UTF-8 keeps its own bytes in the CSV
    output = write_csv(buffer.getvalue().encode("utf-8", "surrogateescape"), output, args.checkpoint)
    table = PrettyTable(["image", "anomaly score", "verdict"], align="l")
    table.align["anomaly score"] = "r"
    for path, value, verdict in rows:
        table.add_row([shown(path), f"{value:.6f}", verdict])
    print(table)
    n_anomalous = sum(verdict == "anomalous" for _, _, verdict in rows)
    print(f"{n_anomalous} of {len(rows)} image(s) anomalous at the threshold {threshold:.6f} "
          f"({results['threshold_percentile']:g}th percentile of the trial's normal "
          f"validation scores)\nwritten: {output}")
    return output, rows


main = cli(run)

if __name__ == "__main__":
    main(sys.argv[1:])
