"""Tests of tool/report/figures.py: figures beside every trial and run, redrawn by --figures; errors only warn."""
import cv2

import main


def assert_png(path, min_side=200):
    image = cv2.imread(str(path))
    assert image is not None, f"{path} is not a readable PNG"
    assert min(image.shape[:2]) >= min_side


def test_figures_are_drawn_beside_units_and_runs_and_redrawn_by_main(own_trial):
    drawn = [own_trial / f"{name}.png" for name in ("roc", "scores", "reconstructions", "memory")]
    drawn.append(own_trial.parent / "roc_all.png")
    for path in drawn:
        assert_png(path)
    for path in drawn:
        path.unlink()
    main.run(["--figures", str(own_trial.parent), "--device", "cpu"])
    for path in drawn:
        assert_png(path)
    assert not list(own_trial.parent.rglob("*.tmp"))


def test_a_drawing_error_warns_and_keeps_the_results(digits_trial):
    unit, errors = digits_trial
    assert f"warning: figures of {unit} not drawn (RuntimeError: no ink)" in errors
    assert (unit / "results.json").is_file() and not (unit / "roc.png").exists()
    assert_png(unit.parent / "roc_all.png")  # the run's figure is drawn on its own
