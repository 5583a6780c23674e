"""Tests of tool/runs.py: run folders (new, shared, refused when not a run), finished trials skipped on resume,
a damaged config.json, stale temp files, locks for processes sharing a folder, the trial's bank."""
import json
import subprocess
import sys
import threading
import time

import pytest
import torch

import main
from conftest import ENV, command, copy_run, one_error, results_of, run_main, wait_for_files
from tool import checkpoints, runs
from tool.report import tables as report
from tool.errors import UserError
from tool.io import REPO
from tool.locks import file_lock


def test_a_new_run_never_overwrites_an_old_one(data_dir, tmp_path):
    a = run_main(data_dir, tmp_path, "--classes", "1", "--seeds", "0", "--epochs", "1")
    b = run_main(data_dir, tmp_path, "--classes", "1", "--seeds", "0", "--epochs", "1")
    assert a != b and (a / "class1_seed0" / "results.json").is_file()


def test_resume_skips_finished_trials(data_dir, tmp_path, capsys):
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
    assert {row[0] for row in rows} >= {"0", "4", "mean"}  # digits: the name is the index, shown once


@pytest.mark.parametrize("action", ["--resume", "--eval-only", "--table"])
def test_folder_that_is_not_a_run_is_refused(tmp_path, action):
    with pytest.raises(UserError, match="is not a run folder"):
        main.run([action, str(tmp_path)])


# ---------------------------------------------------------------------------------------------
# A damaged run config.json: one clear error (a damaged results.json: tests/test_results.py)
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# A trial after kill -9: its stale temp files go; two processes on one --run-dir
# ---------------------------------------------------------------------------------------------
def test_stale_temp_files_of_a_killed_run_are_removed_on_resume(data_dir, tmp_path):
    run_dir = run_main(data_dir, tmp_path, "--classes", "3", "--seeds", "0", "--epochs", "1")
    trial = run_dir / "class3_seed0"
    (trial / "results.json").unlink()  # the trial is unfinished again, as after kill -9 in its last epoch
    (trial / ".last.pt.x7_k2m9q.tmp").write_bytes(bytes(4 << 20))  # what kill -9 during torch.save leaves
    (trial / ".results.json.abcdefgh.tmp").write_text("{")
    (trial / "my.tmp").write_text("not the writer's: kept")
    main.run(["--resume", str(run_dir)])
    assert (trial / "results.json").is_file()
    assert sorted(p.name for p in trial.glob("*.tmp")) == ["my.tmp"] and not list(trial.glob(".*.tmp"))


def test_a_trial_another_process_holds_is_skipped(data_dir, tmp_path):
    shared = tmp_path / "shared"
    run_main(data_dir, tmp_path, "--classes", "1", "--seeds", "0", "--epochs", "1", "--run-dir", str(shared))
    with file_lock(shared / "class0_seed0" / ".lock") as held:  # another process is running class 0, seed 0
        assert held
        done = command("main.py", "--data-dir", data_dir, "--epochs", "1", "--min-steps", "0", "--classes", "0", "1", "--seeds", "0",
                       "--jobs", "1", "--draw-figures", "false", "--run-dir", shared)
    assert done.returncode == 0, done.stderr
    assert "1 trial(s) to run, 1 already finished" in done.stdout
    assert f"class 0 seed 0: skipped here, another process is running it (it holds {shared}/class0_seed0/.lock)" \
        in done.stdout
    assert not (shared / "class0_seed0" / "results.json").exists()


def test_a_second_process_on_a_running_trial_skips_it_and_both_are_in_the_history(data_dir, tmp_path):
    """Issue 12: two processes on one new --run-dir both ran the same trial, and config.json's
    history kept one of them. The second starts here once the first is training."""
    shared = tmp_path / "shared"
    args = ["main.py", "--data-dir", data_dir, "--epochs", "20", "--min-steps", "0", "--patience", "20", "--batch-size", "16",
            "--classes", "0", "--seeds", "0", "--draw-figures", "false", "--jobs", "1", "--run-dir", shared]
    first = subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, env=ENV, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        wait_for_files([shared / "class0_seed0" / "last.pt"], 300, first)  # the first process is training
        second = command(*args, "--device", "cpu")
    finally:
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 0, (err, second.stderr)
    assert "class 0 seed 0: skipped here, another process is running it" in second.stdout, second.stdout
    log = (shared / "class0_seed0" / "train.log").read_text().splitlines()  # the trial ran once, in the first
    assert [line.split()[5] for line in log] == [str(e) for e in range(1, 21)]  # process: epochs 1 to 20, once each
    assert (shared / "class0_seed0" / "results.json").is_file()
    commands = [entry["command"] for entry in json.loads((shared / "config.json").read_text())["history"]]
    assert len(commands) == 2 and commands[1].endswith("--device cpu")


def test_the_command_history_keeps_every_writer(tmp_path, monkeypatch):
    """Writers of one run folder's config.json at the same moment (slowed down here to make every
    read-modify-write overlap) each add their entry."""
    real_read = runs.read_json

    def slow_read(*args):
        time.sleep(0.05)
        return real_read(*args)

    monkeypatch.setattr(runs, "read_json", slow_read)
    runs.write_run_config(tmp_path, {"dataset": "digits"})
    barrier = threading.Barrier(6)

    def write():
        barrier.wait()
        runs.write_run_config(tmp_path, {"dataset": "digits"})

    threads = [threading.Thread(target=write) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(json.loads((tmp_path / "config.json").read_text())["history"]) == 7


def test_the_bank_is_kept_in_float16_read_back_as_float32_and_only_beside_its_own_weights(finished_run, tmp_path):
    from tool.results import read_results

    run_dir = copy_run(finished_run, tmp_path / "a")
    trial = run_dir / "class0_seed0"
    saved = torch.load(trial / "bank.pt", weights_only=True)
    _, model = checkpoints.load_trial_model(trial, "cpu")
    scorer = checkpoints.load_scorer(trial, model, read_results(trial))
    code = saved["banks"]["code"]
    assert code.dtype == torch.float16 and scorer.banks["code"].dtype == torch.float32
    assert torch.equal(scorer.banks["code"], code.float())
    other = copy_run(finished_run, tmp_path / "b") / "class0_seed0"
    checkpoint = torch.load(other / "best.pt", weights_only=True)
    checkpoint["best_epoch"] += 1  # other weights (another trial, or this one trained again)
    torch.save(checkpoint, other / "best.pt")
    with pytest.raises(UserError, match="does not belong to the weights"):
        checkpoints.load_scorer(other, model, read_results(other))
