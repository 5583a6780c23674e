"""Tests of tool/runs.py: run folders (new, shared, refused when not a run), finished trials skipped on resume."""
import pytest

import main
from conftest import results_of, run_main
from tool import report
from tool.errors import UserError


def test_a_new_run_never_overwrites_an_old_one(data_dir, tmp_path):
    a = run_main(data_dir, tmp_path, "--classes", "1", "--seeds", "0", "--epochs", "1")
    b = run_main(data_dir, tmp_path, "--classes", "1", "--seeds", "0", "--epochs", "1")
    assert a != b and (a / "class1_seed0" / "results.json").is_file()


def test_resume_skips_finished_units(data_dir, tmp_path, capsys):
    run_dir = run_main(data_dir, tmp_path, "--classes", "6", "--seeds", "0", "--epochs", "1")
    stamp = (run_dir / "class6_seed0" / "results.json").stat().st_mtime_ns
    main.run(["--resume", str(run_dir)])
    assert "0 trial(s) to run, 1 already finished" in capsys.readouterr().out
    assert (run_dir / "class6_seed0" / "results.json").stat().st_mtime_ns == stamp


def test_run_dir_shared_by_independent_units(data_dir, tmp_path):
    shared = tmp_path / "shared"
    for c in ("0", "4"):
        run_main(data_dir, tmp_path, "--classes", c, "--seeds", "0", "--epochs", "1", "--run-dir", str(shared))
    assert sorted(results_of(shared)) == ["class0_seed0", "class4_seed0"]
    with pytest.raises(UserError, match="other settings"):
        run_main(data_dir, tmp_path, "--classes", "0", "--seeds", "0", "--epochs", "2", "--run-dir", str(shared))
    header, rows = report.run_table(shared)
    assert {row[0] for row in rows} >= {"0 0", "4 4", "mean"}


@pytest.mark.parametrize("action", ["--resume", "--eval-only", "--table"])
def test_folder_that_is_not_a_run_is_refused(tmp_path, action):
    with pytest.raises(UserError, match="is not a run folder"):
        main.run([action, str(tmp_path)])
