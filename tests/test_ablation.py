"""scripts/ablate_scores.py: ideas are scored on a tuning split only, from a trial's own checkpoint."""
import shutil
import sys

import pytest

from conftest import REPO, command, one_error, run_main
from tool.data.prepare import prepare_tuning_split
from tool.results import read_results

sys.path.insert(0, str(REPO / "scripts"))
import ablate_scores  # noqa: E402


def test_refuses_a_run_on_a_test_split(finished_run):
    one_error(command("scripts/ablate_scores.py", finished_run), "not on a tuning split", "--tuning-split digits")
    one_error(command("scripts/ablate_scores.py", finished_run, "--draws", "0"), "--draws must be at least 1")


def test_scores_a_tuning_run_as_the_trial_did(tmp_path, data_dir, capsys):
    shutil.copytree(data_dir / "digits", tmp_path / "digits")
    prepare_tuning_split("digits", tmp_path, verbose=False)
    run = run_main(tmp_path, tmp_path / "runs", "--dataset", "digits-tune", "--classes", "0", "--seeds", "0",
                   "--epochs", "2")
    capsys.readouterr()
    ablate_scores.ablate(run, draws=3)
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("class0_seed0"))
    words = line.split()[1:]
    values = dict(zip(words[::2], map(float, words[1::2])))
    saved = read_results(run / "class0_seed0")["metrics"]
    for name in ("recon", "latent-knn", "memory", "fused"):  # the trial's own scores, computed again
        assert values[name] == pytest.approx(100 * saved[name]["auroc"], abs=0.006)
    assert {"tt-recon", "tt-std", "fused-tt"} <= set(values)
