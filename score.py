"""Score new images with a trained trial: the anomaly score and a verdict at the trial's threshold.

    python score.py --trial runs/mine/cascade/20261128-120000/class0_seed0 photo.png more_photos/
    python score.py --trial RUN_DIR/class0_seed0 images/ --output scores.csv --device cpu --score recon

Every image gets the preprocessing the trial's dataset recorded (folder datasets: size, channels,
interpolation; see tool/data/folder.py; built-in datasets: none, the image must already have the
model's channels), then training's pixel scaling, and the score evaluation computes (tool/scores.py),
with what the trial kept: the banks of normal training features in bank.pt, the validation
statistics and thresholds in results.json. --score: by default the run's SCORE, or for SCORE
"best" the best score of the network (fused-lof for a conv encoder, fused-hidden for an MLP one,
fused-ssl with a self-supervised task); recon is the paper's. An image is "anomalous" when its
score is above the trial's validation threshold for that score (a percentile of the scores of
normal validation images). Folders are searched recursively for PNG, JPEG and BMP files.

Every image that can be read is scored; those that cannot are listed at the end, and then the
command exits with code 2. The table is printed and written as CSV (path, anomaly_score,
threshold, verdict): to --output, which must not exist yet, or by default to scores.csv in the
trial folder (scores-1.csv, ... when that is taken). Nothing is ever overwritten.
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

from tool.data.folder import INTERPOLATION, INTERPOLATIONS, image_problem, list_images, read_image, shown, to_chw
from tool.errors import UserError, cli
from tool.flags import OneLineParser
from tool.io import check_target, create_new_file
from tool.results import read_results
from tool.checkpoints import load_scorer, load_trial_model
from tool.report.tables import as_text_cell
from tool.scores import FUSIONS, SCORES, recommended
from tool.settings import resolve_device


def parse_args(argv=None):
    parser = OneLineParser(prog="score.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trial", "--checkpoint", dest="trial", required=True, metavar="TRIAL_DIR",
                        help="a finished trial of a run: RUN_DIR/class<c>_seed<s> (holds best.pt, bank.pt and "
                             "results.json); --checkpoint is the older name")
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders of images")
    parser.add_argument("--output", metavar="CSV", help="write the scores here (must not exist; default: "
                                                       "scores.csv in the trial folder, or the next free scores-N.csv)")
    parser.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,cuda:N,mps}",
                        help="auto: CUDA, then MPS, then the CPU")
    parser.add_argument("--score", metavar="NAME", help=f"the score to give: {', '.join([*SCORES, *FUSIONS])} (those "
                                                        f"the trial has; default: the run's SCORE, or the best)")
    return parser.parse_args(argv)


def open_trial(folder, device):
    """(trial config, scorer, results) of a finished trial folder; else a UserError."""
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
            and isinstance(preprocessing.get("interpolation"), str)):
        raise UserError(f"{folder / 'config.json'} is damaged (no usable preprocessing). Train the trial again.")
    return trial, load_scorer(folder, model, results), results


def find_images(inputs, problems):
    """Image files from files and folders (recursively, sorted), in the order given; what cannot
    be a file to read is appended to `problems` as (path, reason)."""
    files = []
    for text in inputs:
        given = Path(text)
        if not text.strip():
            problems.append((text, "an empty name (give a file or a folder)"))
        elif given.is_dir():
            skipped = []
            found = list_images(given, skipped)
            unlisted = [(path, why) for path, why in skipped if why.startswith("cannot")]
            problems += unlisted
            if len(skipped) > len(unlisted):
                print(f"{shown(given)}: ignored {len(skipped) - len(unlisted)} file(s) that are not PNG, JPEG or BMP")
            if not found:
                problems.append((given, "no PNG, JPEG or BMP image in this folder"))
            files += found
        elif given.is_symlink() and not given.exists():
            problems.append((given, "a symbolic link to nothing (or a loop of links)"))
        elif given.exists() or given.is_symlink():
            files.append(given)  # a regular file, or something read_image names (a FIFO, a device)
        else:
            problems.append((given, "no such file or folder"))
    return files


def load_images(files, input_shape, preprocessing, problems):
    """(the files read, uint8 (N, C, H, W) for the model): read, channels checked, resized as
    training's images were; each file that cannot be is appended to `problems` (path, reason)."""
    channels, height, width = input_shape
    if preprocessing:  # a folder dataset: read exactly as preprocess.py read its images
        mode, interpolation = ("grayscale" if preprocessing["grayscale"] else "rgb"), preprocessing["interpolation"]
        if interpolation not in INTERPOLATIONS:
            raise UserError(f"the trial's dataset was resized with '{interpolation}' interpolation, which this code "
                            f"does not know ({', '.join(INTERPOLATIONS)}).")
    else:  # a built-in dataset: its images are the model's size already; nothing to convert
        mode, interpolation = "as-stored", INTERPOLATION
    read, images, resized = [], [], []
    for path in files:
        image, problem = read_image(path, mode), None
        if image is None:
            problem = image_problem(path, mode)
        elif image.shape[2] != channels:
            problem = (f"{image.shape[2]} channel(s), but the model takes {channels} and its dataset's "
                       f"preprocessing records no conversion: convert it to {'grayscale' if channels == 1 else 'RGB'}")
        if problem:
            problems.append((path, problem))
            continue
        if image.shape[:2] != (height, width):
            resized.append(f"{shown(path)} ({image.shape[0]} x {image.shape[1]})")
        read.append(path)
        images.append(to_chw(image, (height, width), interpolation))
    if resized:
        print(f"warning: {len(resized)} image(s) resized to the model's {height} x {width} ({interpolation} "
              f"interpolation): {', '.join(resized)}", file=sys.stderr)
    return read, (torch.from_numpy(np.stack(images)) if images else None)


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
    trial, scorer, results = open_trial(args.trial, device)
    configured = trial["config"].get("score")
    name = args.score or (configured if configured in scorer.names else recommended(scorer.names))
    if name not in scorer.names:
        from tool.scores import features_of, names_of

        model_has = name in names_of(features_of(scorer.model))  # else no scoring again can add it
        raise UserError(f"--score {name}: this trial has the scores {', '.join(scorer.names)}" + (
            f" (a score missing from its results.json or bank.pt: python main.py --eval-only "
            f"{Path(args.trial).parent})" if model_has else f"; a {trial['config']['model']} network has no {name}"))
    output = check_output(args.output)
    problems = []
    files, images = load_images(find_images(args.images, problems), trial["input_shape"], trial.get("preprocessing"),
                                problems)
    if images is None:
        raise UserError(f"no image to score: {_listed(problems)}")
    values = scorer.scores(images, [name])[name]  # as evaluation computes them
    threshold = scorer.thresholds[name]
    rows = [(str(path), float(value), "anomalous" if value > threshold else "normal")
            for path, value in zip(files, values)]

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "anomaly_score", "threshold", "verdict"])
    writer.writerows([as_text_cell(path), f"{value:.6f}", f"{threshold:.6f}", verdict] for path, value, verdict in rows)
    # written before anything is printed: a folder that cannot take it is one error, not a table and a crash;
    # a file name that is not UTF-8 keeps its own bytes in the CSV
    output = write_csv(buffer.getvalue().encode("utf-8", "surrogateescape"), output, args.trial)
    table = PrettyTable(["image", f"{name} score", "verdict"], align="l")
    table.align[f"{name} score"] = "r"
    for path, value, verdict in rows:
        table.add_row([shown(path), f"{value:.6f}", verdict])
    print(table)
    n_anomalous = sum(verdict == "anomalous" for _, _, verdict in rows)
    print(f"{n_anomalous} of {len(rows)} image(s) anomalous at the threshold {threshold:.6f} "
          f"({results['threshold_percentile']:g}th percentile of the trial's normal "
          f"validation scores of {name})\nwritten: {output}")
    if problems:
        raise UserError(f"{len(problems)} of {len(problems) + len(rows)} input(s) could not be scored (the others are "
                        f"in {output}): {_listed(problems)}")
    return output, rows


def _listed(problems):
    return "; ".join(f"{shown(path)}: {why}" for path, why in problems[:20]) + \
        (f"; and {len(problems) - 20} more" if len(problems) > 20 else "")


main = cli(run)

if __name__ == "__main__":
    main(sys.argv[1:])
