"""Tests of score.py: scores equal a trial's results.json, no overwrites, resizing and channels, bad input."""
import csv
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import score
from conftest import ENV, NAME, command, one_error
from tool.errors import UserError
from tool.scores import FUSIONS
from tool.results import read_results, read_scores


def score_run(trial, *args):
    return score.run(["--checkpoint", str(trial), *map(str, args), "--device", "cpu"])


def test_scoring_the_test_images_reproduces_results_json(own_trial, own_images, own_prepared, tmp_path):
    output, rows = score_run(own_trial, own_images / "test", "--score", "recon", "--output", tmp_path / "scores.csv")
    results = read_results(own_trial)
    meta = json.loads((own_prepared[0] / NAME / "processed" / "meta.json").read_text())
    assert json.loads((own_trial / "config.json").read_text())["preprocessing"] == meta["preprocessing"]
    saved = dict(zip(meta["files"]["test"], read_scores(own_trial)[1]["recon"]))  # in the test split's order
    threshold = results["thresholds"]["recon"]
    assert len(rows) == len(saved) == 18
    for path, value, verdict in rows:  # scores.npz keeps float16: 3 significant digits
        assert value == pytest.approx(saved[Path(path).relative_to(own_images).as_posix()], rel=1e-3)
        assert verdict == ("anomalous" if value > threshold else "normal")
    with open(output, newline="") as f:
        written = list(csv.reader(f))
    assert written[0] == ["path", "anomaly_score", "threshold", "verdict"]
    assert [(p, float(s), v) for p, s, _, v in written[1:]] == [(p, round(s, 6), v) for p, s, v in rows]


def test_scores_never_overwrite_a_file(own_trial, own_images):
    image = own_images / "test" / "dark" / "dark_00.png"
    first, _ = score_run(own_trial, image)
    second, _ = score_run(own_trial, image)
    assert (first.name, second.name) == ("scores.csv", "scores-1.csv") and first.parent == own_trial
    before = first.read_text()
    with pytest.raises(UserError, match="exists"):
        score_run(own_trial, image, "--output", first)
    assert first.read_text() == before


def test_other_sizes_are_resized_with_a_warning_and_grey_images_converted(own_trial, digits_trial, tmp_path, capsys):
    grey = tmp_path / "grey.png"
    assert cv2.imwrite(str(grey), np.full((16, 16), 200, np.uint8))
    _, rows = score_run(own_trial, grey, "--output", tmp_path / "a.csv")  # RGB model: the grey file is read as RGB
    assert len(rows) == 1 and "resized to the model's 12 x 12" in capsys.readouterr().err
    _, rows = score_run(digits_trial[0], grey, "--output", tmp_path / "b.csv")  # digits: 8 x 8, one channel
    assert len(rows) == 1 and "resized to the model's 8 x 8" in capsys.readouterr().err


@pytest.mark.parametrize("make_input, message", [
    (lambda tmp, images: images / "train" / "bright" / "corrupt.png", "corrupt, too large, or not a PNG"),
    (lambda tmp, images: tmp / "missing.png", "no such file or folder"),
    (lambda tmp, images: (tmp / "empty").mkdir() or tmp / "empty", "no PNG, JPEG or BMP image"),
    (lambda tmp, images: os.mkfifo(tmp / "fifo.png") or tmp / "fifo.png", "not a regular file"),
    (lambda tmp, images: (tmp / "loop.png").symlink_to(tmp / "loop.png") or tmp / "loop.png", "a loop of links"),
    (lambda tmp, images: "", "an empty name"),
])
def test_nothing_to_score_is_one_error_and_writes_nothing(own_trial, own_images, tmp_path, make_input, message):
    with pytest.raises(UserError, match=f"no image to score: .*{message}"):
        score_run(own_trial, make_input(tmp_path, own_images), "--output", tmp_path / "scores.csv")
    assert not (tmp_path / "scores.csv").exists()


def test_every_readable_image_is_scored_and_the_others_listed_with_exit_code_2(own_trial, own_images, tmp_path):
    good = own_images / "test" / "dark" / "dark_00.png"
    corrupt = own_images / "train" / "bright" / "corrupt.png"
    done = command("score.py", "--trial", own_trial, good, corrupt, tmp_path / "missing.png", "--output",
                   tmp_path / "s.csv", "--device", "cpu")
    one_error(done, "2 of 3 input(s) could not be scored", "corrupt.png: corrupt", "missing.png: no such file")
    assert "dark_00.png" in done.stdout
    rows = (tmp_path / "s.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith(str(good))
    sparse = tmp_path / "huge.png"  # 20 GB as a sparse file: refused by its size, never read
    with open(sparse, "wb") as f:
        f.truncate(20 * 2 ** 30)
    one_error(command("score.py", "--trial", own_trial, sparse, "--device", "cpu"), "more than an image file may be")


def test_a_channel_count_the_preprocessing_cannot_convert_fails(digits_trial, own_images, tmp_path):
    with pytest.raises(UserError, match="3 channel.*the model takes 1"):
        score_run(digits_trial[0], own_images / "test" / "dark" / "dark_00.png", "--output", tmp_path / "s.csv")
    assert not (tmp_path / "s.csv").exists()


def test_a_folder_that_is_not_a_trial_fails(own_trial, own_images, tmp_path):
    with pytest.raises(UserError, match="not a finished trial.*give one of its trials"):
        score_run(own_trial.parent, own_images / "test", "--output", tmp_path / "s.csv")
    with pytest.raises(UserError, match="not a finished trial"):
        score_run(tmp_path, own_images / "test", "--output", tmp_path / "s.csv")
    assert not (tmp_path / "s.csv").exists()


def test_command_line_errors_exit_2_without_a_traceback(tmp_path, own_images):
    one_error(command("score.py", "--checkpoint", tmp_path, own_images / "test", "--device", "cpu", timeout=120),
              "not a finished trial")
    assert list(tmp_path.iterdir()) == []


def float16_slack(trial, name):
    """How far a score rebuilt from scores.npz may lie from the full-precision one, per test image:
    nothing beyond float16's rounding for a stored score; for a fused one (rebuilt from its float16
    members) the members' rounding (2^-11 of each), standardised as the fusion does, summed."""
    if name not in FUSIONS:
        return np.zeros(len(read_scores(trial)[0]))
    stats, scores = read_results(trial)["validation_stats"], read_scores(trial)[1]
    return sum(np.abs(scores[m]) * 2.0 ** -10 / stats[m][1] for m in FUSIONS[name][0] if m in scores)


@pytest.mark.parametrize("name", ["latent-knn", "latent-lof", "memory", "fused", "fused-lof"])
def test_every_score_of_new_images_is_the_one_evaluation_gave(own_trial, own_images, own_prepared, tmp_path, name):
    output, rows = score_run(own_trial, own_images / "test", "--score", name, "--output", tmp_path / f"{name}.csv")
    meta = json.loads((own_prepared[0] / NAME / "processed" / "meta.json").read_text())
    saved = dict(zip(meta["files"]["test"], read_scores(own_trial)[1][name]))
    slack = dict(zip(meta["files"]["test"], float16_slack(own_trial, name)))
    threshold = read_results(own_trial)["thresholds"][name]
    for path, value, verdict in rows:
        key = Path(path).relative_to(own_images).as_posix()
        assert value == pytest.approx(saved[key], rel=2e-3, abs=max(2e-3, slack[key]))
        assert verdict == ("anomalous" if value > threshold else "normal")


def test_a_score_the_trial_lacks_is_refused(own_trial, own_images):
    with pytest.raises(UserError, match="--score nope: this trial has the scores recon, latent-knn"):
        score_run(own_trial, own_images / "test", "--score", "nope")


def test_a_read_only_trial_folder_is_one_error_before_any_score_is_printed(own_trial, own_images):
    image = own_images / "test" / "dark" / "dark_00.png"
    before = sorted(p.name for p in own_trial.iterdir())
    done = command("score.py", "--checkpoint", own_trial, image, "--device", "cpu", fault="read-only", root=own_trial)
    one_error(done, f"cannot write {own_trial}/scores", "(the folder is not writable): make it writable or choose "
                                                        "another folder")
    assert "dark_00.png" not in done.stdout and sorted(p.name for p in own_trial.iterdir()) == before


def test_a_full_disk_is_one_error_and_writes_nothing(own_trial, own_images, tmp_path):
    done = command("score.py", "--checkpoint", own_trial, own_images / "test", "--output", tmp_path / "s.csv",
                   "--device", "cpu", fault="full-disk", root=tmp_path)
    one_error(done, f"cannot write {tmp_path / 's.csv'} (no space left on the device)")
    assert list(tmp_path.iterdir()) == []


def test_a_file_name_that_is_not_utf8_is_read(own_trial, own_images, tmp_path):
    """OpenCV's imread crashed the process (exit 139) on such a name; the bytes are read by Python."""
    folder = tmp_path / "new"
    folder.mkdir()
    name = os.fsdecode(b"bad\xff\xfe.png")
    (folder / name).write_bytes((own_images / "test" / "dark" / "dark_00.png").read_bytes())
    output = tmp_path / "scores.csv"
    done = command("score.py", "--checkpoint", own_trial, folder, "--output", output, "--device", "cpu",
                   env={**ENV, "LC_ALL": "C.UTF-8"})
    assert done.returncode == 0, done.stderr
    assert "bad\\xff\\xfe.png" in done.stdout  # shown with its undecodable bytes escaped
    line = output.read_bytes().splitlines()[1]
    assert line.startswith(str(folder).encode() + b"/bad\xff\xfe.png,")  # the CSV keeps the name's own bytes
    _, rows = score_run(own_trial, folder / "../new", "--output", tmp_path / "again.csv")
    reference = score_run(own_trial, own_images / "test" / "dark" / "dark_00.png", "--output", tmp_path / "ref.csv")[1]
    assert rows[0][1] == reference[0][1]


@pytest.mark.parametrize("damage", ["truncated", "a list", "no metrics"])
def test_a_damaged_results_json_is_one_error(own_trial, own_images, tmp_path, damage):
    trial = Path(shutil.copytree(own_trial, tmp_path / "trial"))
    results = trial / "results.json"
    results.write_text({"truncated": results.read_text()[:200], "a list": "[]",
                        "no metrics": json.dumps({"class": 0, "seed": 0})}[damage])
    done = command("score.py", "--checkpoint", trial, own_images / "test", "--output", tmp_path / "s.csv",
                   "--device", "cpu")
    one_error(done, f"{results} ", "Delete it and run the trial again")
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize("damage", ["nan", "wide", "one", "empty", "huge", "another trial's"])
def test_a_damaged_bank_is_one_error_naming_it(own_trial, own_images, tmp_path, damage):
    """A bank.pt of non-finite codes, of codes of another width, of fewer than 2 codes or of another
    trial's weights gave NaN or meaningless neighbour scores, or a traceback, before it was checked."""
    import torch

    trial = tmp_path / own_trial.name
    shutil.copytree(own_trial, trial)
    saved = torch.load(trial / "bank.pt", weights_only=True)
    bank = saved["banks"]["code"]
    if damage == "another trial's":
        saved["model_sha256"] = "0" * 64
    else:
        saved["banks"]["code"] = {"nan": bank.index_fill(0, torch.tensor([0]), float("nan")), "wide": bank[:, :3],
                                  "one": bank[:1], "empty": bank[:0], "huge": bank.float() * 1e30}[damage]
    torch.save(saved, trial / "bank.pt")
    message = "does not belong to the weights" if damage == "another trial's" else "bank.pt: the code bank"
    for name in ("latent-knn", "recon"):
        with pytest.raises(UserError, match=message):
            score_run(trial, own_images / "test", "--score", name, "--output", tmp_path / f"{name}.csv")
        assert not (tmp_path / f"{name}.csv").exists()


@pytest.mark.parametrize("name", ["hidden-knn", "hidden-lof", "fused-hidden"])
def test_an_mlp_trial_scores_new_images_in_its_hidden_layer_as_evaluation_did(own_mlp_trial, own_images,
                                                                               own_prepared, tmp_path, name):
    output, rows = score_run(own_mlp_trial, own_images / "test", "--score", name, "--output", tmp_path / "s.csv")
    meta = json.loads((own_prepared[0] / NAME / "processed" / "meta.json").read_text())
    saved = dict(zip(meta["files"]["test"], read_scores(own_mlp_trial)[1][name]))
    slack = dict(zip(meta["files"]["test"], float16_slack(own_mlp_trial, name)))
    for path, value, _ in rows:
        key = Path(path).relative_to(own_images).as_posix()
        assert value == pytest.approx(saved[key], rel=2e-3, abs=max(2e-3, slack[key]))


def test_hidden_scores_are_refused_for_a_conv_trial_and_a_damaged_hidden_bank_is_one_error(own_trial, own_mlp_trial,
                                                                                          own_images, tmp_path):
    import torch

    assert "hidden-knn" not in read_results(own_trial)["metrics"]  # the conv encoder has no hidden bank
    with pytest.raises(UserError, match="--score hidden-knn: this trial has the scores recon, latent-knn") as error:
        score_run(own_trial, own_images / "test", "--score", "hidden-knn")
    assert "a cascade network has no hidden-knn" in str(error.value) and "--eval-only" not in str(error.value)
    trial = tmp_path / own_mlp_trial.name
    shutil.copytree(own_mlp_trial, trial)
    saved = torch.load(trial / "bank.pt", weights_only=True)
    assert saved["banks"]["hidden"].dtype == torch.float16 and saved["banks"]["hidden"].shape[1] == 512
    saved["banks"]["hidden"] = saved["banks"]["hidden"][:, :7]
    torch.save(saved, trial / "bank.pt")
    with pytest.raises(UserError, match="bank.pt: the hidden bank is damaged"):
        score_run(trial, own_images / "test", "--score", "hidden-knn", "--output", tmp_path / "hidden.csv")
    del saved["banks"]["hidden"]  # a trial scored before hidden-knn existed: told how to score it again
    torch.save(saved, trial / "bank.pt")
    with pytest.raises(UserError, match="--score hidden-knn: this trial has .* python main.py --eval-only"):
        score_run(trial, own_images / "test", "--score", "hidden-knn", "--output", tmp_path / "old.csv")
    score_run(trial, own_images / "test", "--score", "latent-knn", "--output", tmp_path / "codes.csv")  # codes intact


def test_a_file_name_that_starts_like_a_formula_is_written_as_text(own_trial, own_images, tmp_path, monkeypatch):
    """score.py's CSV opened in a spreadsheet: a name such as '=cmd|calc.png' must not be a formula."""
    monkeypatch.chdir(tmp_path)
    for name in ("=cmd|calc.png", "+1.png", "plain.png"):
        shutil.copy(own_images / "test" / "dark" / "dark_00.png", tmp_path / name)
    output, _ = score_run(own_trial, "=cmd|calc.png", "+1.png", "plain.png", "--output", tmp_path / "out.csv")
    cells = sorted(line.split(",")[0] for line in output.read_text().splitlines()[1:])
    assert cells == ["'+1.png", "'=cmd|calc.png", "plain.png"]
