"""The second hostile round's defects, each with the test that failed before its fix: writers and
targets that are not regular files, SIGTERM and worker processes, outputs created exclusively,
staging folders of killed exports, and the command line's pipes and encodings."""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import filelock
import numpy as np
import pytest

from conftest import ENV, REPO, command, copy_run, one_error, wait_for_files
from tool.report.export import export
from tool.errors import UserError
from tool.io import atomic_torch_save, atomic_write_bytes, create_new_file
from tool.locks import staging_dir

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")


def special_files(folder):
    """A character device (the null device's numbers, made inside the test's own folder), a FIFO
    and a folder, each at a path a writer may be given. Never the machine's own /dev."""
    made = {"fifo": folder / "fifo", "folder": folder / "folder"}
    os.mkfifo(made["fifo"])
    made["folder"].mkdir()
    if os.geteuid() == 0:
        made["device"] = folder / "device"
        os.mknod(made["device"], stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return made


def kinds(paths):
    return {name: stat.S_IFMT(os.lstat(path).st_mode) for name, path in paths.items()}


def test_no_writer_replaces_a_device_a_fifo_or_a_folder(tmp_path):
    made = special_files(tmp_path)
    before = kinds(made)
    for name, path in made.items():
        for write in (lambda p: atomic_write_bytes(p, b"x"), lambda p: atomic_torch_save({"a": 1}, p),
                      lambda p: create_new_file(p, b"x")):
            with pytest.raises(UserError, match="a write never replaces one"):
                write(path)
    link = tmp_path / "link-to-fifo"
    link.symlink_to(made["fifo"])
    with pytest.raises(UserError, match="not a regular file"):
        atomic_write_bytes(link, b"x")
    assert kinds(made) == before and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*made, "link-to-fifo"])  # no temp file left


@needs_root
def test_the_detector_and_score_py_refuse_a_device_node(tmp_path, own_trial, own_images):
    from tool.detector import CascadeMemoryDetector

    made = special_files(tmp_path)
    detector = CascadeMemoryDetector(preset="ae-mlp", epochs=1, min_steps=0, patience_steps=0)
    detector.fit(np.random.default_rng(0).integers(0, 256, (40, 1, 8, 8), dtype=np.uint8))
    for path in made.values():
        with pytest.raises(UserError, match="cannot write"):
            detector.save(path)
        one_error(command("score.py", "--checkpoint", own_trial, own_images / "test" / "dark" / "dark_00.png",
                          "--output", path, "--device", "cpu"), str(path))
    assert stat.S_ISCHR(os.lstat(made["device"]).st_mode) and stat.S_ISFIFO(os.lstat(made["fifo"]).st_mode)


def test_a_new_file_is_created_exclusively(tmp_path):
    path = tmp_path / "scores.csv"
    create_new_file(path, b"first")
    with pytest.raises(FileExistsError):
        create_new_file(path, b"second")
    assert path.read_bytes() == b"first" and sorted(os.listdir(tmp_path)) == ["scores.csv"]


def test_score_py_takes_the_next_free_name_and_never_overwrites_one_that_appeared(tmp_path):
    import score

    (tmp_path / "scores.csv").write_text("another run's\n")
    assert score.write_csv(b"mine\n", None, tmp_path) == tmp_path / "scores-1.csv"
    given = score.check_output(str(tmp_path / "out.csv"))  # free when checked ...
    given.write_text("another run's\n")  # ... taken by another process while the images were scored
    with pytest.raises(UserError, match="appeared while the images were scored"):
        score.write_csv(b"mine\n", given, tmp_path)
    assert given.read_text() == (tmp_path / "scores.csv").read_text() == "another run's\n"
    for bad in ("", "  ", f"{tmp_path}/out/", str(tmp_path)):
        with pytest.raises(UserError, match="is not a file name"):
            score.check_output(bad)


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_killed_exports_staging_folder_is_never_a_run_and_is_removed_by_the_next_export(finished_run, tmp_path,
                                                                                            capsys):
    from tool.report import tables as report

    dest = tmp_path / "results"
    first = export(finished_run, dest)
    parent = first.parent
    stale = parent / f".{finished_run.name}.{_dead_pid()}.abcd1234.tmp"  # what a kill -9 mid-export leaves
    stale.mkdir()
    (stale / "config.json").write_bytes((first / "config.json").read_bytes())
    alive = parent / f".{finished_run.name}.{os.getppid()}.efgh5678.tmp"  # a process that still runs: not touched
    alive.mkdir()
    (dest / ".vscode").mkdir()
    (dest / ".vscode" / "config.json").write_text('{"editor": 1}')
    (dest / "notes").mkdir()
    (dest / "notes" / "config.json").write_text('{"another": "tool"}')  # not a run's config: left out
    renamed = parent / "classic_run"  # a run folder whose name starts with "class" is still a run
    first.rename(renamed)
    report.compare(dest)
    printed = capsys.readouterr().out
    assert "classic_run" in printed and ".tmp" not in printed and "vscode" not in printed
    shutil_copy = copy_run(finished_run, tmp_path / "again")
    export(shutil_copy, dest)
    assert not stale.exists() and alive.is_dir()
    assert stat.S_IMODE(os.stat(parent / shutil_copy.name).st_mode) == 0o777 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_staging_folder_has_the_usual_permissions(tmp_path):
    folder = staging_dir(tmp_path, "target")
    assert folder.name.startswith(f".target.{os.getpid()}.") and folder.name.endswith(".tmp")
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o777 & ~_umask()


@pytest.mark.parametrize("jobs", [2, 1])
def test_sigterm_stops_every_worker_releases_the_locks_and_leaves_resumable_trials(data_dir, tmp_path, jobs):
    """SIGTERM (scancel, systemd, timeout) to main.py: it ends with exit code 143 and one line, no
    process of its group trains on, every trial lock is free at once, and each trial keeps a
    last.pt to resume from."""
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "main.py", "--dataset", "digits", "--data-dir", str(data_dir), "--classes", "0", "1",
         "--seeds", "0", "--jobs", str(jobs), "--epochs", "3000", "--min-steps", "0", "--checkpoint-seconds", "0",
         "--draw-figures", "false", "--run-dir", str(run_dir)],
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        started = [run_dir / f"class{c}_seed0" / "last.pt" for c in ((0, 1) if jobs == 2 else (0,))]
        wait_for_files(started, 120, process)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("terminated (SIGTERM)") and "Traceback" not in err
    _wait_for_group_exit(process.pid, 10)  # no worker left in the command's process group
    for path in started:
        with filelock.FileLock(str(path.parent / ".lock")).acquire(timeout=0):
            pass
        assert path.is_file() and not (path.parent / "results.json").exists()


def test_a_worker_killed_mid_trial_ends_the_command_with_one_error_not_a_hang(data_dir, tmp_path):
    """kill -9 of one worker (what the out-of-memory killer does) lost its trial, and the pool, which
    starts a new worker in its place, waited for that trial forever. It must end with one error that
    says how to continue, the other worker stopped and every trial lock free."""
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "main.py", "--dataset", "digits", "--data-dir", str(data_dir), "--classes", "0", "1", "2",
         "--seeds", "0", "--jobs", "2", "--epochs", "3000", "--min-steps", "0", "--draw-figures", "false",
         "--run-dir", str(run_dir)],
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        started = [run_dir / f"class{c}_seed0" / "last.pt" for c in (0, 1)]
        wait_for_files(started, 120, process)
        workers = subprocess.run(["pgrep", "-P", str(process.pid), "-f", "multiprocessing-fork"],
                                 capture_output=True, text=True).stdout.split()
        assert len(workers) == 2
        os.kill(int(workers[0]), signal.SIGKILL)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    # after the error line, Python's resource tracker may warn that it freed the semaphores the killed worker held
    assert process.returncode == 2 and "Traceback" not in err, err
    assert err.startswith("error: a worker process died (killed by signal 9") and \
        f"python main.py --resume {run_dir} " in err.splitlines()[0], err
    _wait_for_group_exit(process.pid, 10)
    for path in started:
        with filelock.FileLock(str(path.parent / ".lock")).acquire(timeout=0):
            pass
        assert path.is_file()


def test_a_worker_ignores_a_second_sigterm_while_it_exits():
    """A worker's SIGTERM handler unwinds the trial as SystemExit(143) and ignores any later SIGTERM:
    a second one (the pool's terminate() after the process group's) once landed in tqdm's atexit
    callback and printed 'Exception ignored in atexit callback' with a traceback."""
    from tool import errors, parallel

    before = signal.signal(signal.SIGTERM, parallel._exit_quietly)
    try:
        with pytest.raises(SystemExit) as exited:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs between bytecodes, before this ends
        assert exited.value.code == 143 and signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        assert errors.terminating()
        os.kill(os.getpid(), signal.SIGTERM)  # ignored: no second SystemExit
        time.sleep(0.05)
    finally:
        signal.signal(signal.SIGTERM, before)


def _wait_for_group_exit(pgid, timeout):
    """Until no process of the group `pgid` runs; fails at the deadline with the ones still there."""
    deadline = time.monotonic() + timeout
    while _group_runs(pgid):
        assert time.monotonic() < deadline, subprocess.run(["ps", "-o", "pid,pgid,args", "-g", str(pgid)],
                                                           capture_output=True, text=True).stdout
        time.sleep(0.1)


def _group_runs(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_closed_pipe_and_an_ascii_terminal_are_no_traceback(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    process = subprocess.Popen([sys.executable, "main.py", "--table", str(run_dir)], cwd=REPO, env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # `| head -0`: the reader is gone before the table is printed
    err = process.stderr.read().decode()
    process.wait(timeout=60)
    assert process.returncode == 141 and err == "", err
    done = command("main.py", "--table", run_dir, env={**ENV, "PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0 and "\\xb1" in done.stdout, done.stderr


def test_every_committed_run_folder_tables_and_the_digits_ones_resume(tmp_path, capsys):
    """Issue item 5: results/ once held run folders --resume refused (a setting missing from 14 of
    37) and that left a .config.lock behind. After the one migration (scripts/migrate_runs.py) every
    run folder there is read by --table, each digits one resumes (nothing left to train), and --table
    leaves no lock file."""
    import main
    from tool.report.tables import find_runs

    results = Path(shutil.copytree(REPO / "results", tmp_path / "results"))
    runs = [run for group in find_runs(results).values() for run in group.values()]
    assert len(runs) >= 30
    for run in runs:
        main.run(["--table", str(run)])
        assert not list(run.rglob("*.lock")), run
        if json.loads((run / "config.json").read_text())["config"]["dataset"] == "digits":
            assert Path(main.run(["--resume", str(run), "--device", "cpu"])) == run
            assert "0 trial(s) to run" in capsys.readouterr().out


def test_a_trial_of_a_class_the_dataset_no_longer_has_is_shown_by_its_own_name(finished_run, tmp_path, capsys):
    """A folder dataset prepared again with fewer classes, then --table of an older run: the trial's
    class is past the dataset's last one (IndexError before); its results.json names it."""
    import main

    run = copy_run(finished_run, tmp_path)
    trial = run / "class12_seed0"
    (run / "class0_seed0").rename(trial)
    saved = json.loads((trial / "results.json").read_text())
    (trial / "results.json").write_text(json.dumps({**saved, "class": 12, "class_name": "twelve"}))
    main.run(["--table", str(run)])
    assert "12 twelve" in capsys.readouterr().out


def test_preparing_images_larger_than_memory_is_refused_before_anything_is_allocated(own_images, tmp_path):
    done = command("preprocess.py", "--dataset", "folder", "--path", own_images, "--name", "huge", "--size", "20000",
                   "20000", "--data-dir", tmp_path)
    one_error(done, "GiB to prepare, more than this machine's memory allows", "choose a smaller --size")
    assert not (tmp_path / "huge").exists()


# ---------------------------------------------------------------------------------------------
# The third hostile round (on the finished tree)
# ---------------------------------------------------------------------------------------------
def test_files_read_are_regular_and_bounded_so_no_fifo_or_device_hangs_a_command(finished_run, tmp_path):
    """A FIFO where a config file, a run's config.json, a trial's results.json or last.pt stands
    blocked the command forever; a device or a huge file was read without end."""
    import main

    fifo = tmp_path / "c.py"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"):
        main.run([str(fifo)])
    tree = tmp_path / "tree"
    run = copy_run(finished_run, tree)
    (tree / "other").mkdir()
    os.mkfifo(tree / "other" / "config.json")
    with pytest.raises(UserError, match="not a regular file"):
        main.run(["--compare", str(tree)])
    (tree / "other" / "config.json").unlink()
    (run / "class0_seed0" / "results.json").unlink()
    os.mkfifo(run / "class0_seed0" / "last.pt")
    with pytest.raises(UserError, match="last.pt is a device, a FIFO or a socket: a run folder holds the files"):
        main.run(["--resume", str(run)])  # refused before the sweep starts (tool/runs.py, check_own_files)
    huge = tmp_path / "huge.py"
    with open(huge, "wb") as f:
        f.truncate(2 ** 30)  # sparse: a gigabyte claimed, nothing read
    with pytest.raises(UserError, match="larger than such a file can be"):
        main.run([str(huge)])


@pytest.mark.parametrize("text, message", [
    ("EPOCHS = " + "-" * 100000 + "1\n", "cannot be read"),
    ("CLASSES = {[1]: 2}\n", "must be a plain value"),
    ("CLASSES = 3\n", "CLASSES = 3 should be a list, or None, like main.py.s CLASSES = None"),
    ("MEMAE_SHRINK_THRESHOLD = \"x\"\n", "should be a number, or None"),
    ("EPOCHS = " + "9" * 5000 + "\n", "cannot be read"),
    ("EPOCHS = " + hex(10 ** 5000) + "\n", "EPOCHS\\) must be at most 2147483648, got an integer of about"),
    ("LR = " + "1" + "0" * 400 + "\n", "--lr \\(LR\\) must be"),
])
def test_a_hostile_config_file_is_one_clear_error(tmp_path, text, message):
    import main

    path = tmp_path / "row.py"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        main.run([str(path), "--dataset", "digits"])


def test_an_image_whose_header_claims_too_many_pixels_is_not_decoded(tmp_path):
    import cv2
    import struct

    from tool.data.folder import image_problem

    ok, png = cv2.imencode(".png", np.zeros((8, 8), np.uint8))
    data = bytearray(png.tobytes())
    data[16:24] = struct.pack(">II", 60000, 60000)  # the IHDR's width and height
    (tmp_path / "big.png").write_bytes(bytes(data))
    assert "60000 x 60000 pixels, more than an image may have" in image_problem(tmp_path / "big.png", "rgb")


def test_a_trial_without_its_bank_gives_the_scores_that_need_none(own_trial, own_images, tmp_path):
    import score

    trial = Path(shutil.copytree(own_trial, tmp_path / "trial"))
    (trial / "bank.pt").unlink()
    _, rows = score.run(["--trial", str(trial), str(own_images / "test" / "dark"), "--output", str(tmp_path / "a.csv"),
                         "--device", "cpu"])  # the recommended fused-lof needs the bank: recon is the one left
    assert len(rows) == 6
    with pytest.raises(UserError, match="--score fused: this trial has the scores recon, memory "):
        score.run(["--trial", str(trial), str(own_images / "test"), "--score", "fused", "--device", "cpu"])


def test_the_scripts_refuse_odd_files_and_inputs_in_one_line(finished_run, tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    import migrate_runs

    odd = tmp_path / "odd" / "run" / "class0_seed0"
    odd.mkdir(parents=True)
    (odd / "results.json").write_text('{"metrics": 5}')
    with pytest.raises(UserError, match="is not a trial's results.json in any layout"):
        migrate_runs.migrate(tmp_path / "odd")
    hidden = tmp_path / ".hidden"
    run = copy_run(finished_run, hidden)
    saved = json.loads((run / "config.json").read_text())
    saved["config"].pop("ssl")
    (run / "config.json").write_text(json.dumps(saved))
    assert migrate_runs.migrate(hidden) == 1  # a dot in the path above the root hides nothing
    one_error(command("scripts/compare_fusions.py", run, "--fusion", "bogus,recon"), "bogus is not a score")
    one_error(command("scripts/compare_fusions.py", run, "--floor", "nan"), "--floor must be a finite number")
    one_error(command("scripts/migrate_runs.py", "--nope"), "the following arguments are required: FOLDER")
    (tmp_path / "file").write_text("x")
    one_error(command("benchmarks/gpu_check.py", "--device", "cpu", "--dataset", "digits", "--out", tmp_path / "file"),
              "is not an empty folder")
    one_error(command("benchmarks/gpu_check.py", "--device", "cpu", "--epochs", "0", "--out", tmp_path / "new"),
              "--epochs must be at least 1")
    assert not (tmp_path / "new").exists()


def test_the_python_api_refuses_what_it_cannot_take_in_its_own_words(tmp_path):
    from tool.detector import CascadeMemoryDetector, as_images

    pixels = torch_zeros = __import__("torch").zeros(4, 1, 8, 8)
    for images, message in ((pixels.to_sparse(), "sparse tensor"), (torch_zeros.to("meta"), "meta tensor")):
        with pytest.raises(UserError, match=message):
            as_images(images)
    with pytest.raises(UserError, match="would need about .* GiB .* parameters"):
        CascadeMemoryDetector(latent_dim=10 ** 9).fit(np.zeros((40, 8, 8), np.uint8))
    for bad in ({"epochs": 10 ** 5000}, {"lr": 10 ** 400}, {"verbose": "no"}):
        with pytest.raises(UserError):
            CascadeMemoryDetector(**bad)
    detector = CascadeMemoryDetector(epochs=1, min_steps=0, patience_steps=0)
    with pytest.raises(UserError, match="must be"):
        detector.set_params(epochs=-1)
    assert detector.get_params()["epochs"] == 1  # a refused set_params changes nothing
    detector.fit(np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8))
    with pytest.raises(UserError, match="null byte"):
        detector.save(str(tmp_path / "a\0b"))
    detector.set_params(score="recon")
    assert detector.model is not None and detector.score_name == "recon"  # still fitted, as scikit-learn keeps it
    detector.save(tmp_path / "d.pt")
    saved = __import__("torch").load(tmp_path / "d.pt", weights_only=True)
    saved["scorer"]["thresholds"] = {}
    saved["scorer"]["validation_stats"]["recon"] = [1e308, 1e-308]
    __import__("torch").save(saved, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="bad.pt"):
        CascadeMemoryDetector.load(tmp_path / "bad.pt")


def test_export_copies_no_link_and_drops_no_trial(finished_run, tmp_path):
    from tool.report.export import export

    secret = tmp_path / "secret"
    secret.write_text("a secret")
    run = copy_run(finished_run, tmp_path / "runs")
    (run / "table.md").unlink()
    (run / "table.md").symlink_to(secret)
    with pytest.raises(UserError, match="is a symbolic link: an export copies a run's own files only"):
        export(run, tmp_path / "results")
    assert not (tmp_path / "results").exists()
    (run / "table.md").unlink()
    shutil.move(run / "class0_seed0", tmp_path / "elsewhere")
    (run / "class0_seed0").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="class0_seed0 is a symbolic link"):
        export(run, tmp_path / "results")


def test_classes_none_means_every_class():
    import main
    from tool.commands import parse

    _, given = parse(["--classes", "none"], main.DEFAULTS, "", Path(main.__file__))
    assert given["classes"] is None


# ---------------------------------------------------------------------------------------------
# Hostile round three (a pass over the finished tree): links and FIFOs inside run folders, an
# export raced with links, forged sizes, gzip bombs, runaway settings, diverged training
# ---------------------------------------------------------------------------------------------
def test_a_run_folder_holding_a_link_or_fifo_is_refused_before_anything_is_written(finished_run, tmp_path):
    """A trial folder that was a link to someone's folder was written through by --resume (its
    config.json replaced, its *.tmp files deleted); a FIFO as train.log blocked the run forever."""
    import main

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "config.json").write_text('{"mine": 1}')
    (victim / ".notes.abcdefgh.tmp").write_text("keep")
    run = copy_run(finished_run, tmp_path / "runs")
    shutil.rmtree(run / "class0_seed0")
    (run / "class0_seed0").symlink_to(victim)
    for action in (["--resume", str(run)], ["--eval-only", str(run)], ["--leakage", str(run)]):
        with pytest.raises(UserError, match="class0_seed0 is a symbolic link: a run folder holds its own files only"):
            main.run(action)
    assert (victim / "config.json").read_text() == '{"mine": 1}' and (victim / ".notes.abcdefgh.tmp").exists()
    (run / "class0_seed0").unlink()
    shutil.copytree(finished_run / "class0_seed0", run / "class0_seed0")
    (run / "class0_seed0" / "results.json").unlink()  # unfinished: --resume would train it
    (run / "class0_seed0" / "train.log").unlink(missing_ok=True)
    os.mkfifo(run / "class0_seed0" / "train.log")
    one_error(command("main.py", "--resume", run, timeout=60), "train.log is a device, a FIFO or a socket")
    (run / "class0_seed0" / "train.log").unlink()
    (run / "class0_seed0" / "train.log").symlink_to(victim / "config.json")
    one_error(command("main.py", "--resume", run, timeout=60), "train.log is a symbolic link")
    assert (victim / "config.json").read_text() == '{"mine": 1}'


def test_export_reads_no_file_through_a_link_even_one_swapped_in_while_it_reads(finished_run, tmp_path):
    """--export checked for links first and read the files later, so a link swapped in between
    copied a secret file into results/ (3 times in 15 tries); now each part of each path is opened
    with O_NOFOLLOW, so a link anywhere below the run folder is refused when it is read."""
    from tool.io import read_own_file

    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "table.md").write_text("password")
    run = copy_run(finished_run, tmp_path / "runs")
    assert read_own_file(run, "class0_seed0/results.json", "") == (run / "class0_seed0" / "results.json").read_bytes()
    (run / "table.md").unlink()
    (run / "table.md").symlink_to(secret / "table.md")
    with pytest.raises(UserError, match="table.md is or lies below a symbolic link"):
        read_own_file(run, "table.md", "")
    (run / "class9_seed0").symlink_to(secret)
    with pytest.raises(UserError, match="is or lies below a symbolic link"):
        read_own_file(run, "class9_seed0/table.md", "")


def test_a_forged_input_shape_is_refused_before_memory_is_taken(own_trial, own_images, tmp_path):
    """A trial's config.json saying [1, 1024, 1024] made score.py allocate 2.7 GB before refusing."""
    trial = Path(shutil.copytree(own_trial, tmp_path / "trial"))
    saved = json.loads((trial / "config.json").read_text())
    (trial / "config.json").write_text(json.dumps({**saved, "input_shape": [1, 16384, 16384]}))
    line = one_error(command("score.py", "--trial", trial, own_images / "test", "--device", "cpu", timeout=120),
                     "config.json: a training step of the", "more than this machine's memory allows")
    assert "GiB" in line


def test_settings_whose_training_step_cannot_fit_in_memory_are_refused_at_once():
    """--channels 100000 passed the check on parameters alone (activations were not counted) and
    took 12 GB in 25 s; now a batch's activations are counted too (tool/settings.py)."""
    one_error(command("main.py", "--channels", "4096", "4096", "--batch-size", "100000", "--seeds", "0", timeout=60),
              "a training step of the cascade model on 1 x 8 x 8 images would need about")


def test_a_run_config_listing_a_hundred_thousand_classes_is_damaged(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**saved, "config": {**saved["config"], "classes": list(range(10 ** 5))}}))
    one_error(command("main.py", "--table", run, timeout=60), "distinct class indexes below 1000")


def test_resume_prepares_no_dataset_in_a_folder_the_run_folder_names(finished_run, tmp_path):
    """A run folder whose config.json names another data_dir made --resume prepare the dataset
    there (writing outside the run folder); now it only reads it, or takes --data-dir."""
    run = copy_run(finished_run, tmp_path / "runs")
    (run / "class0_seed0" / "results.json").unlink()
    saved = json.loads((run / "config.json").read_text())
    elsewhere = tmp_path / "elsewhere"
    (run / "config.json").write_text(json.dumps({**saved, "config": {**saved["config"], "data_dir": str(elsewhere)}}))
    one_error(command("main.py", "--resume", run, timeout=60), "dataset 'digits' is not prepared")
    assert not elsewhere.exists()


def test_a_checkpoint_of_another_seed_or_other_settings_is_not_resumed(tmp_path):
    """last.pt copied into another trial's folder was continued as that trial, and one whose
    config.json's learning rate was edited went on at the old rate; a forged training state (an
    epoch of 10**12, a NaN loss) ended up in results.json."""
    import main
    import torch

    from models import ModelConfig, build_model
    from tool.io import atomic_torch_save
    from tool.train import TrainConfig, train_model

    x = torch.rand(40, 1, 8, 8)
    model = build_model("ae", (1, 8, 8), ModelConfig.from_settings(main.DEFAULTS))
    config = TrainConfig.from_settings({**main.DEFAULTS, "epochs": 1, "min_steps": 0, "checkpoint_seconds": 0})
    train_model(model, x, x[:8], config, tmp_path / "last.pt", generator_seed=0, log=None)
    with pytest.raises(UserError, match="written by a trial of other settings, images or seed \\(differ: seed\\)"):
        train_model(model, x, x[:8], config, tmp_path / "last.pt", generator_seed=1, log=None)
    lr = TrainConfig.from_settings({**main.DEFAULTS, "epochs": 1, "min_steps": 0, "lr": 0.01})
    with pytest.raises(UserError, match="differ: lr\\)"):
        train_model(model, x, x[:8], lr, tmp_path / "last.pt", generator_seed=0, log=None)
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    for forged in ({"epoch": 10 ** 12}, {"best_val": float("nan")}):
        atomic_torch_save({**saved, "state": {**saved["state"], **forged}}, tmp_path / "forged.pt")
        with pytest.raises(UserError, match="does not fit this model and settings"):
            train_model(model, x, x[:8], config, tmp_path / "forged.pt", generator_seed=0, log=None)


def test_a_diverged_training_is_one_clear_error_not_scikit_learns(data_dir, tmp_path):
    """--lr 1000: the codes reach infinity in float16's banks, and scikit-learn raised 'Input X
    contains infinity' after training."""
    one_error(command("main.py", "--data-dir", data_dir, "--output-dir", tmp_path, "--classes", "0", "--seeds", "0",
                      "--lr", "1000", "--epochs", "2", "--min-steps", "0", "--jobs", "1", "--draw-figures", "false"),
              "its training diverged", "--lr")


def test_odd_outputs_and_names_are_one_line_not_a_traceback(finished_run, tmp_path):
    """A name over 255 characters, stdout closed or on a full device, a null byte in a folder setting."""
    one_error(command("main.py", "--run-dir", tmp_path / ("a" * 300), "--classes", "0", "--seeds", "0"),
              "File name too long")
    (tmp_path / "null.py").write_text('OUTPUT_DIR = "runs\\x00x"\n')  # a null byte, as the file's escape
    one_error(command("main.py", tmp_path / "null.py"), "no null byte")
    closed = subprocess.run([sys.executable, "main.py", "--table", str(finished_run)], cwd=REPO, stdout=None,
                            capture_output=False, stderr=subprocess.PIPE, text=True, timeout=60,
                            preexec_fn=lambda: os.close(1))
    assert closed.returncode == 0 and "Traceback" not in closed.stderr
    os.mknod(tmp_path / "full", 0o666 | stat.S_IFCHR, os.makedev(1, 7))  # a /dev/full of the test's own
    with open(tmp_path / "full", "w") as full:
        done = subprocess.run([sys.executable, "main.py", "--table", str(finished_run)], cwd=REPO, stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.strip() == "error: No space left on device"


def test_weights_copied_from_another_trial_are_not_scored_with_this_trials_thresholds(data_dir, own_images, tmp_path):
    """best.pt and bank.pt copied from another trial were scored with this trial's results.json
    (its thresholds, 3.846 instead of 5.565) without a word; results.json records its weights."""
    from conftest import run_main

    run = run_main(data_dir, tmp_path / "runs", "--classes", "0", "--seeds", "0", "1", "--epochs", "1")
    one, two = run / "class0_seed0", run / "class0_seed1"
    assert json.loads((one / "results.json").read_text())["model_sha256"]
    for name in ("best.pt", "bank.pt"):
        shutil.copy(two / name, one / name)
    one_error(command("score.py", "--trial", one, own_images / "test", "--device", "cpu", timeout=120),
              "results.json holds the thresholds of other weights than")


def test_a_sigterm_inside_a_checkpoint_write_ends_as_sigterm_not_as_a_full_disk(tmp_path, monkeypatch):
    """torch.save's C++ writer swallows the Terminated that SIGTERM raises in its write callback and
    reports "unexpected pos" instead: the command must still end as SIGTERM (143), the temp file gone."""
    from tool import errors, io

    class Swallowing:
        def write(self, data):
            try:
                errors.terminate(15)
            except errors.Terminated:
                pass
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1684032 vs 1683924")

    monkeypatch.setattr(io.torch, "save", lambda obj, f: Swallowing().write(b""))
    with pytest.raises(errors.Terminated):
        io.atomic_torch_save({"w": 1}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []
    errors._SIGTERM_SEEN.clear()

    def failing(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1684032 vs 1683924")

    monkeypatch.setattr(io.torch, "save", failing)
    with pytest.raises(UserError, match="the disk is probably full"):  # without a SIGTERM: a failed write
        io.atomic_torch_save({"w": 1}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_worker_whose_sigterm_a_checkpoint_write_swallowed_ends_instead_of_waiting_for_more(
        data_dir, tmp_path, monkeypatch):
    """The same swallowed SIGTERM in a worker process: the trial failed with a 'full disk', the
    pool's worker took that for the trial's error and waited for the next task with SIGTERM now
    ignored, so pool.terminate() waited for it forever (main.py --jobs 2 hung after SIGTERM in CI).
    The worker must end with SystemExit(143), and a trial's real error must stay itself."""
    from tool import errors, io, parallel

    def swallowing(obj, f):  # torch.save's C++ writer: the handler's exception is lost, a failed write reported
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        except SystemExit:
            pass
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1684032 vs 1683924")

    def trial(config, ds, c, seed, run_dir, device, log):
        io.atomic_torch_save({"w": 1}, Path(run_dir) / "last.pt")
        return {"auroc": 0.5}

    config = {"dataset": "digits", "data_dir": str(data_dir)}
    monkeypatch.setattr(io.torch, "save", swallowing)
    before = signal.signal(signal.SIGTERM, parallel._exit_quietly)
    try:
        with pytest.raises(SystemExit) as exited:
            parallel._worker((trial, config, 0, 0, str(tmp_path)))
        assert exited.value.code == 143 and list(tmp_path.iterdir()) == []
    finally:
        signal.signal(signal.SIGTERM, before)
    errors._SIGTERM_SEEN.clear()

    def failing(config, ds, c, seed, run_dir, device, log):
        raise RuntimeError("a trial's own error")

    with pytest.raises(RuntimeError, match="a trial's own error"):  # no SIGTERM: the error reaches the parent
        parallel._worker((failing, config, 0, 0, str(tmp_path)))


def _start_then_sleep(path):
    Path(path).touch()
    time.sleep(600)


def test_a_worker_that_outlives_its_sigterm_is_killed_and_the_command_ends(monkeypatch, tmp_path):
    """pool.terminate() waits for every worker it sent SIGTERM: one that never ends (SIGTERM ignored,
    a call that never returns) must not hang the command; it is killed after KILL_AFTER_S."""
    import multiprocessing as mp

    from tool import parallel

    monkeypatch.setattr(parallel, "KILL_AFTER_S", 1)
    context = mp.get_context("spawn")
    pool = context.Pool(1, initializer=signal.signal, initargs=(signal.SIGTERM, signal.SIG_IGN))
    started = tmp_path / "started"
    pool.apply_async(_start_then_sleep, (str(started),))
    wait_for_files([started], 60)  # the worker is inside its task (a pool told to stop before that ends it with 0)
    workers = context.active_children()
    start = time.monotonic()
    parallel._terminate(pool, workers)
    pool.join()
    assert time.monotonic() - start < 30 and workers and all(w.exitcode == -signal.SIGKILL for w in workers)
