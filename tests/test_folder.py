"""Own images end to end: a folder of PNGs -> preprocess.py -> main.py -> score.py, the figures,
and every kind of bad input failing with one message and no partial files."""
import csv
import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import cv2
import numpy as np
import pytest

import main
import preprocess
import score
from tool import figures
from tool.datasets import load_dataset
from tool.protocol import make_split
from tool.errors import UserError
from tool.folder import prepare_folder

REPO = Path(__file__).resolve().parent.parent
NAME = "mine"
CLASSES = ("bright", "dark", "striped")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def pixels(kind, rng, size=12):
    """A small BGR image (as cv2.imwrite takes it): 'bright' (light, red-tinted), 'dark', or
    'striped' (light rows on dark)."""
    base = {"bright": (150, 200, 225), "dark": (10, 10, 10), "striped": (10, 10, 10)}[kind]
    image = np.array(base) + rng.integers(0, 30, (size, size, 3))
    if kind == "striped":
        image[::2] += 200
    return np.clip(image, 0, 255).astype(np.uint8)


def write_images(folder, kind, n, rng, size=12):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        assert cv2.imwrite(str(folder / f"{kind}_{i:02d}.png"), pixels(kind, rng, size))


@pytest.fixture(scope="module")
def own_images(tmp_path_factory):
    """DIR/train/<class>/ (16 a class) and DIR/test/<class>/ (6 a class), 12 x 12, plus one 16 x 16
    image, one corrupt .png and one text file."""
    root = tmp_path_factory.mktemp("own") / "images"
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("test", 6)):
        for kind in CLASSES:
            write_images(root / split / kind, kind, n, rng)
    assert cv2.imwrite(str(root / "train" / "bright" / "large.png"), pixels("bright", rng, size=16))
    (root / "train" / "bright" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "train" / "dark" / "notes.txt").write_text("not an image\n")
    return root


@pytest.fixture(scope="module")
def prepared(own_images, tmp_path_factory):
    """(data folder, what preprocess.py printed)."""
    data_dir = tmp_path_factory.mktemp("data")
    printed = io.StringIO()
    with redirect_stdout(printed):
        preprocess.main(["--dataset", "folder", "--path", str(own_images), "--name", NAME, "--data-dir", str(data_dir)])
    return data_dir, printed.getvalue()


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory):
    """The unit folder of a 2-epoch run: 'bright' normal, 'dark' and 'striped' anomalies."""
    run_dir = main.run(["--dataset", NAME, "--data-dir", str(prepared[0]), "--output-dir",
                        str(tmp_path_factory.mktemp("runs")), "--epochs", "2", "--seeds", "0", "--classes", "bright",
                        "--protocol", "one-normal-class", "--device", "cpu"])
    return Path(run_dir) / "class0_seed0"


def _broken(*args, **kwargs):
    raise RuntimeError("no ink")


@pytest.fixture(scope="module")
def digits_unit(tmp_path_factory):
    """(unit folder, stderr) of a 1-epoch unit on digits (built-in: 1 x 8 x 8, no recorded
    preprocessing), trained while drawing its figures fails."""
    root = tmp_path_factory.mktemp("digits")
    errors = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stderr(errors):
        patch.setattr(figures, "roc_figure", _broken)
        run_dir = main.run(["--dataset", "digits", "--data-dir", str(root / "data"), "--output-dir", str(root / "runs"),
                            "--epochs", "1", "--seeds", "0", "--classes", "0", "--protocol", "one-normal-class",
                            "--device", "cpu"])
    return Path(run_dir) / "class0_seed0", errors.getvalue()


def score_run(unit, *args):
    return score.run(["--checkpoint", str(unit), *map(str, args), "--device", "cpu"])


# ---------------------------------------------------------------------------------------------
# preprocess.py --dataset folder
# ---------------------------------------------------------------------------------------------
def test_preprocess_skips_and_lists_bad_files_and_records_its_preprocessing(prepared):
    data_dir, printed = prepared
    assert "skipped 2 file(s)" in printed
    assert "train/bright/corrupt.png: unreadable" in printed and "train/dark/notes.txt: not a PNG" in printed
    assert "1 of 67 image(s) resized" in printed  # the 16 x 16 image; 12 x 12 is the most common size
    meta = json.loads((data_dir / NAME / "processed" / "meta.json").read_text())
    assert meta["classes"] == list(CLASSES) and meta["shape"] == [3, 12, 12]
    assert meta["splits"]["train"]["per_class"] == [17, 16, 16] and meta["splits"]["test"]["per_class"] == [6, 6, 6]
    assert {k: meta["preprocessing"][k] for k in ("size", "channels", "grayscale", "interpolation")} == \
        {"size": [12, 12], "channels": 3, "grayscale": False, "interpolation": "area"}
    assert [s["file"] for s in meta["skipped"]] == ["train/bright/corrupt.png", "train/dark/notes.txt"]
    assert meta["files"]["test"][:2] == ["test/bright/bright_00.png", "test/bright/bright_01.png"]
    ds = load_dataset(NAME, data_dir)
    assert ds.class_index("bright") == ds.class_index("0") == ds.class_index(0) == 0
    assert ds.class_index("striped") == ds.class_index("2") == 2
    bright = ds.train_images[ds.train_labels == 0].float().mean(dim=(0, 2, 3))
    assert bright[0] > bright[2] + 50  # red-tinted images: channel 0 is red (BGR -> RGB)


def test_flat_folder_gets_a_seeded_stratified_split(tmp_path):
    rng = np.random.default_rng(1)
    for kind, n in (("bright", 10), ("dark", 15)):
        write_images(tmp_path / "flat" / kind, kind, n, rng)

    def files(name, **kwargs):
        assert prepare_folder(tmp_path / "flat", name, tmp_path / "data", verbose=False, **kwargs) == "prepared"
        return json.loads((tmp_path / "data" / name / "processed" / "meta.json").read_text())

    meta = files("a", size=(6, 8), grayscale=True)
    assert meta["shape"] == [1, 6, 8] and meta["preprocessing"]["grayscale"] is True
    assert meta["splits"]["test"]["per_class"] == [2, 3] and meta["splits"]["train"]["per_class"] == [8, 12]
    assert files("b")["files"] == meta["files"]  # same seed, same split
    assert files("c", seed=1, test_fraction=0.4)["splits"]["test"]["per_class"] == [4, 6]
    assert prepare_folder(tmp_path / "flat", "a", tmp_path / "data", verbose=False).startswith("already prepared")


def test_a_class_may_be_absent_from_train_as_in_mvtec_ad(tmp_path):
    rng = np.random.default_rng(2)
    write_images(tmp_path / "images" / "train" / "good", "bright", 6, rng)
    write_images(tmp_path / "images" / "test" / "good", "bright", 2, rng)
    write_images(tmp_path / "images" / "test" / "crack", "striped", 3, rng)
    prepare_folder(tmp_path / "images", "parts", tmp_path / "data", verbose=False)
    ds = load_dataset("parts", tmp_path / "data")
    assert ds.classes == ["crack", "good"]
    assert ds.meta["splits"]["train"]["per_class"] == [0, 6] and ds.meta["splits"]["test"]["per_class"] == [3, 2]
    assert make_split(ds, "one-normal-class", "good").counts["test"] == (2, 3)  # (normal, anomalous)


@pytest.mark.parametrize("make, name, message", [
    (lambda root: None, NAME, "no such folder"),
    (lambda root: write_images(root / "only", "dark", 3, np.random.default_rng(0)), NAME, "at least two class"),
    (lambda root: (write_images(root / "a", "dark", 3, np.random.default_rng(0)),
                   (root / "b").mkdir(), (root / "b" / "notes.txt").write_text("x")), NAME, "holds no readable"),
    (lambda root: [write_images(root / c, c, 3, np.random.default_rng(0)) for c in CLASSES], "mnist",
     "taken by a built-in dataset"),
    (lambda root: write_images(root / "train" / "dark", "dark", 3, np.random.default_rng(0)), NAME,
     "no test/ folder"),
])
def test_bad_folders_fail_before_writing_anything(tmp_path, make, name, message):
    make(tmp_path / "images")
    with pytest.raises(UserError, match=message):
        prepare_folder(tmp_path / "images", name, tmp_path / "data", verbose=False)
    assert not (tmp_path / "data").exists()


def test_split_settings_do_not_apply_to_a_folder_with_its_own_split(own_images, tmp_path):
    for setting in ({"test_fraction": 0.3}, {"seed": 1}):
        with pytest.raises(UserError, match="own train/ and test/ folders: --test-fraction and --seed do not apply"):
            prepare_folder(own_images, NAME, tmp_path / "data", verbose=False, **setting)
    assert not (tmp_path / "data").exists()


def test_folder_flags_need_dataset_folder(capsys):
    with pytest.raises(SystemExit) as exit_:
        preprocess.main(["--path", "somewhere", "--name", NAME])
    assert exit_.value.code == 2
    assert "--path, --name can only be used with --dataset folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# score.py
# ---------------------------------------------------------------------------------------------
def test_scoring_the_test_images_reproduces_results_json(trained, own_images, prepared, tmp_path):
    output, rows = score_run(trained, own_images / "test", "--output", tmp_path / "scores.csv")
    results = json.loads((trained / "results.json").read_text())
    meta = json.loads((prepared[0] / NAME / "processed" / "meta.json").read_text())
    assert json.loads((trained / "config.json").read_text())["preprocessing"] == meta["preprocessing"]
    saved = dict(zip(meta["files"]["test"], results["scores"]))  # results.json keeps the test split's order
    threshold = results["threshold"]["value"]
    assert len(rows) == len(saved) == 18
    for path, value, verdict in rows:
        assert value == pytest.approx(saved[Path(path).relative_to(own_images).as_posix()], abs=2e-6)
        assert verdict == ("anomalous" if value > threshold else "normal")
    with open(output, newline="") as f:
        written = list(csv.reader(f))
    assert written[0] == ["path", "anomaly_score", "threshold", "verdict"]
    assert [(p, float(s), v) for p, s, _, v in written[1:]] == [(p, round(s, 6), v) for p, s, v in rows]


def test_scores_never_overwrite_a_file(trained, own_images):
    image = own_images / "test" / "dark" / "dark_00.png"
    first, _ = score_run(trained, image)
    second, _ = score_run(trained, image)
    assert (first.name, second.name) == ("scores.csv", "scores-1.csv") and first.parent == trained
    before = first.read_text()
    with pytest.raises(UserError, match="exists"):
        score_run(trained, image, "--output", first)
    assert first.read_text() == before


def test_other_sizes_are_resized_with_a_warning_and_grey_images_converted(trained, digits_unit, tmp_path, capsys):
    grey = tmp_path / "grey.png"
    assert cv2.imwrite(str(grey), np.full((16, 16), 200, np.uint8))
    _, rows = score_run(trained, grey, "--output", tmp_path / "a.csv")  # RGB model: the grey file is read as RGB
    assert len(rows) == 1 and "resized to the model's 12 x 12" in capsys.readouterr().err
    _, rows = score_run(digits_unit[0], grey, "--output", tmp_path / "b.csv")  # digits: 8 x 8, one channel
    assert len(rows) == 1 and "resized to the model's 8 x 8" in capsys.readouterr().err


@pytest.mark.parametrize("make_input, message", [
    (lambda tmp, images: images / "train" / "bright" / "corrupt.png", "cannot be read as an image"),
    (lambda tmp, images: tmp / "missing.png", "no such file or folder"),
    (lambda tmp, images: (tmp / "empty").mkdir() or tmp / "empty", "no PNG, JPEG or BMP image"),
])
def test_bad_images_fail_without_writing(trained, own_images, tmp_path, make_input, message):
    with pytest.raises(UserError, match=message):
        score_run(trained, make_input(tmp_path, own_images), "--output", tmp_path / "scores.csv")
    assert not (tmp_path / "scores.csv").exists()


def test_a_channel_count_the_preprocessing_cannot_convert_fails(digits_unit, own_images, tmp_path):
    with pytest.raises(UserError, match="has 3 channel.*model takes 1"):
        score_run(digits_unit[0], own_images / "test" / "dark" / "dark_00.png", "--output", tmp_path / "s.csv")
    assert not (tmp_path / "s.csv").exists()


def test_a_folder_that_is_not_a_trial_fails(trained, own_images, tmp_path):
    with pytest.raises(UserError, match="not a finished trial.*give one of its trials"):
        score_run(trained.parent, own_images / "test", "--output", tmp_path / "s.csv")
    with pytest.raises(UserError, match="not a finished trial"):
        score_run(tmp_path, own_images / "test", "--output", tmp_path / "s.csv")
    assert not (tmp_path / "s.csv").exists()


def test_command_line_errors_exit_2_without_a_traceback(tmp_path, own_images):
    commands = [["preprocess.py", "--dataset", "folder", "--path", str(tmp_path / "nowhere"), "--name", NAME,
                 "--data-dir", str(tmp_path / "data")],
                ["score.py", "--checkpoint", str(tmp_path), str(own_images / "test"), "--device", "cpu"]]
    for command, message in zip(commands, ["no such folder", "not a finished trial"]):
        done = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True, env=ENV,
                              timeout=120)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and done.stderr.startswith("error: ") and message in done.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
def assert_png(path, min_side=200):
    image = cv2.imread(str(path))
    assert image is not None, f"{path} is not a readable PNG"
    assert min(image.shape[:2]) >= min_side


def test_figures_are_drawn_beside_units_and_runs_and_redrawn_by_main(trained):
    drawn = [trained / f"{name}.png" for name in ("roc", "scores", "reconstructions", "memory")]
    drawn.append(trained.parent / "roc_all.png")
    for path in drawn:
        assert_png(path)
    for path in drawn:
        path.unlink()
    main.run(["--figures", str(trained.parent), "--device", "cpu"])
    for path in drawn:
        assert_png(path)
    assert not list(trained.parent.rglob("*.tmp"))


def test_a_drawing_error_warns_and_keeps_the_results(digits_unit):
    unit, errors = digits_unit
    assert f"warning: figures of {unit} not drawn (RuntimeError: no ink)" in errors
    assert (unit / "results.json").is_file() and not (unit / "roc.png").exists()
    assert_png(unit.parent / "roc_all.png")  # the run's figure is drawn on its own
