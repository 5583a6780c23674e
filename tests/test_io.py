"""Tests of tool/io.py: a corrupt or forged checkpoint is a clear error and never runs code."""
import pytest
import torch

import main
from conftest import run_main
from tool.errors import UserError


def test_corrupt_checkpoint_is_a_clear_error(data_dir, tmp_path):
    run_dir = run_main(data_dir, tmp_path, "--classes", "9", "--seeds", "0", "--epochs", "1")
    (run_dir / "class9_seed0" / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt"):
        main.run(["--eval-only", str(run_dir)])


class _Forged:
    """Unpickling this runs code: it creates `marker` (what a forged checkpoint could do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("forgery", ["whole file", "hidden key in a real checkpoint", "truncated"])
def test_resume_never_runs_code_from_a_checkpoint(data_dir, tmp_path, forgery):
    run_dir = run_main(data_dir, tmp_path, "--classes", "5", "--seeds", "0", "--epochs", "1")
    trial = run_dir / "class5_seed0"
    real = trial / "last.pt"
    torch.save({"model": torch.load(trial / "best.pt", weights_only=True)["model"]}, real)  # a real checkpoint
    (trial / "results.json").unlink()  # the trial is unfinished again: --resume reads last.pt
    marker = tmp_path / "marker"
    if forgery == "whole file":
        torch.save(_Forged(marker), real)
    elif forgery == "hidden key in a real checkpoint":
        torch.save({**torch.load(real, weights_only=True), "extra": _Forged(marker)}, real)
    else:
        real.write_bytes(real.read_bytes()[:1000])
    with pytest.raises(UserError, match="last.pt is not a checkpoint this code wrote.*Delete it"):
        main.run(["--resume", str(run_dir)])
    assert not marker.exists()
