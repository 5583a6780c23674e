"""Tests of tool/runs.py: run folders (new, shared, refused when not a run), finished trials skipped on resume,
damaged results.json and config.json."""
import json

import pytest

import main
import score
from conftest import command, copy_run, files_in, one_error, results_of, run_main
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


# ---------------------------------------------------------------------------------------------
# A damaged results.json or run config.json: every command that reads it gives one clear error
# ---------------------------------------------------------------------------------------------
DAMAGES = {"truncated": lambda text: text[:100], "a list": lambda text: "[]",
           "no metrics": lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "metrics"})}
READERS = ["--table", "--eval-only", "--resume", "--figures", "--export", "--compare", "score.py"]


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("reader", READERS)
def test_a_damaged_results_json_is_one_clear_error_for_every_reader(finished_run, tmp_path, reader, damage):
    run_dir = copy_run(finished_run, tmp_path / "runs")
    results = run_dir / "class0_seed0" / "results.json"
    results.write_text(DAMAGES[damage](results.read_text()))
    before = files_in(tmp_path)
    with pytest.raises(UserError) as error:
        if reader == "score.py":
            score.run(["--checkpoint", str(run_dir / "class0_seed0"), str(tmp_path), "--device", "cpu"])
        elif reader == "--export":
            report.export(run_dir, tmp_path / "results")  # main.py --export, into tmp_path
        else:
            main.run([reader, str(run_dir)])
    assert str(error.value).startswith(f"{results} ")
    assert "Delete it and run the trial again" in str(error.value)
    assert files_in(tmp_path) == before  # nothing written, nothing half-written


def test_a_damaged_results_json_on_the_command_line(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    (run_dir / "class0_seed0" / "results.json").write_text("[]")
    one_error(command("main.py", "--table", run_dir), "results.json is not a trial's results")


def test_compare_over_a_corrupt_run_config_and_table_over_an_empty_one(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    config = run_dir / "config.json"
    config.write_text(config.read_text()[:50])
    one_error(command("main.py", "--compare", tmp_path), f"{config} is truncated or corrupt",
              "Restore it from a copy")
    config.write_text(json.dumps({"config": {}}))
    table = (run_dir / "table.md").read_bytes()
    one_error(command("main.py", "--table", run_dir), f"{config} is damaged: its settings lack or garble dataset",
              "seeds (a list of integer seeds); data_dir", "Restore it from a copy")
    assert (run_dir / "table.md").read_bytes() == table
