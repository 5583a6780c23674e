"""Tests of the Slurm scripts on a real one-node Slurm cluster that the tests start and stop
(scripts/local_slurm.sh: munged, slurmctld and slurmd on 127.0.0.1, everything below a folder of
its own): scripts/slurm_submit.sh submits scripts/slurm_sweep.sh on digits, and the table of the
array equals the table of the same trials run here; a task cancelled while it trains resumes from
its checkpoint; two arrays on one run folder run each trial once; a task whose settings differ from
its run folder fails with one error line; an array larger than the sweep is refused
(docs/cluster.md). Skipped, with the reason, where Slurm is not installed, unless
CASCADE_REQUIRE_SLURM=1 (.ci/run sets it where apt can install Slurm): then that is a failure.

The first tests need no Slurm: the scripts' own checks of their settings."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from conftest import ENV, copy_run, one_error, results_of
from tool.io import REPO

LOCAL_SLURM = REPO / "scripts" / "local_slurm.sh"
SUBMIT = REPO / "scripts" / "slurm_submit.sh"
SWEEP = REPO / "scripts" / "slurm_sweep.sh"
BINARIES = ("munged", "munge", "unmunge", "mungekey", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scontrol",
            "scancel")
REQUIRED = os.environ.get("CASCADE_REQUIRE_SLURM") == "1"
# the settings of every trial here: seconds each (3 epochs of digits, no MIN_STEPS), on the CPU
# also where there is a GPU (the cluster's tasks and the runs here compare to the last bit)
QUICK = "--epochs 3 --min-steps 0 --patience-steps 0 --draw-figures false --device cpu"
# no Slurm setting of the session running the tests reaches the test cluster; nor PYTHONUNBUFFERED:
# that the logs are unbuffered (the cancel test reads them as the task trains) is slurm_sweep.sh's doing
CLEAN_ENV = {k: v for k, v in ENV.items()
             if not k.startswith(("SLURM_", "SBATCH_", "SQUEUE_", "SALLOC_", "SRUN_")) and k != "PYTHONUNBUFFERED"}


def bash(script, *args, env=None, timeout=60):
    return subprocess.run(["bash", str(script), *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          env={**CLEAN_ENV, **(env or {})}, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# Without Slurm: the scripts refuse bad settings with one line, before anything is submitted
# ---------------------------------------------------------------------------------------------
def test_the_sweep_script_counts_the_trials_and_refuses_what_is_not_an_array_task_of_the_sweep():
    assert bash(SWEEP, "--count", env={"SEEDS": "0 1 2"}).stdout.split() == ["30", "10", "3"]
    assert bash(SWEEP, "--count", env={"CLASSES": "3 7", "SEEDS": "0 1"}).stdout.split() == ["4", "2", "2"]
    assert bash(SWEEP, "--count", env={"N_CLASSES": "2", "SEEDS": "5"}).stdout.split() == ["2", "2", "1"]
    one_error(bash(SWEEP, env={"CLASSES": "0 1", "SEEDS": "0 1"}), "not an array task", "--array=0-3")
    # task 1 of an array 0-4 for a sweep of 4 trials: the array was sized for other settings
    one_error(bash(SWEEP, env={"CLASSES": "0 1", "SEEDS": "0 1", "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MAX": "4"}),
              "the array reaches task 4, but the sweep has 4 trials (2 classes x 2 seeds)", "--array=0-3")
    one_error(bash(SWEEP, "--count", env={"SEEDS": " "}), "SEEDS is empty")
    one_error(bash(SWEEP, "--count", env={"N_CLASSES": "ten"}), "N_CLASSES must be a positive whole number")


def test_the_submitter_refuses_bad_settings_before_it_submits(tmp_path):
    run_dir = tmp_path / "run"
    one_error(bash(SUBMIT, env={"SEEDS": " ", "RUN_DIR": str(run_dir)}), "SEEDS is empty")
    one_error(bash(SUBMIT, env={"MAX_RUNNING": "0", "RUN_DIR": str(run_dir)}), "MAX_RUNNING must be a positive")
    assert not run_dir.exists() and not Path(f"{run_dir}.logs").exists()


def test_local_slurm_refuses_an_unknown_command():
    one_error(bash(LOCAL_SLURM, "begin"), "usage: scripts/local_slurm.sh start|stop|status|env")


# ---------------------------------------------------------------------------------------------
# The cluster
# ---------------------------------------------------------------------------------------------
def missing_binaries():
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [b for b in BINARIES if shutil.which(b, path=path) is None]


def need_slurm():
    missing = missing_binaries()
    if missing:
        reason = (f"Slurm is not installed ({', '.join(missing)} not found): "
                  f"apt-get install --no-install-recommends slurm-wlm munge")
        if REQUIRED:
            pytest.fail(f"CASCADE_REQUIRE_SLURM=1, but {reason}")
        pytest.skip(reason)


def free_ports():
    """A port p with p + 1 free as well (slurmctld's and slurmd's)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65000:
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no two free ports in a row")


class Cluster:
    """A local cluster's state folder and the environment its clients need (SLURM_CONF)."""

    def __init__(self):
        # in /tmp, not below pytest's tmp folder: munged wants every folder above its socket open to all
        self.state = Path(tempfile.mkdtemp(prefix="cascade-slurm-", dir="/tmp"))
        self.env = {**CLEAN_ENV, "LOCAL_SLURM_DIR": str(self.state), "LOCAL_SLURM_PORT": str(free_ports()),
                    "SLURM_CONF": str(self.state / "slurm.conf")}

    def script(self, action, timeout=120):
        return subprocess.run(["bash", str(LOCAL_SLURM), action], cwd=REPO, capture_output=True, text=True,
                              env=self.env, timeout=timeout)

    def run(self, *args, env=None, timeout=60):
        return subprocess.run([*map(str, args)], cwd=REPO, capture_output=True, text=True,
                              env={**self.env, **(env or {})}, timeout=timeout)

    def our_processes(self):
        """ps lines naming the state folder (munged, slurmctld, slurmd and the jobs' scripts)."""
        ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
        return [line for line in ps.splitlines() if str(self.state) in line and "ps -eo" not in line]


@pytest.fixture(scope="module")
def cluster():
    """A one-node cluster for this module's tests, stopped at the end (also when a test failed):
    its stop must leave no daemon behind."""
    need_slurm()
    cluster = Cluster()
    try:
        started = cluster.script("start")
        assert started.returncode == 0, started.stdout + started.stderr
        yield cluster
    finally:
        stopped = cluster.script("stop")
        left = cluster.our_processes()
        shutil.rmtree(cluster.state, ignore_errors=True)
        assert stopped.returncode == 0 and not left, (stopped.stdout, stopped.stderr, left)


def submit(cluster, run_dir, classes, seeds, extra, *sbatch_options, **settings):
    """scripts/slurm_submit.sh as a user runs it (the settings in the environment) -> (job id, its
    summary line)."""
    done = cluster.run("bash", SUBMIT, "--parsable", *sbatch_options, env={
        "DATASET": "digits", "MODEL": "cascade", "CLASSES": classes, "SEEDS": seeds, "RUN_DIR": str(run_dir),
        "EXTRA": extra, "PYTHON": sys.executable, **settings})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0], done.stderr.strip()


def wait(cluster, *jobs, timeout=300):
    """Until no task of `jobs` is pending or running (a bounded wait: cancelled at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        queued = cluster.run("squeue", "-h", "-o", "%i", "-j", ",".join(jobs))
        assert queued.returncode == 0, queued.stderr  # the controller answers
        if not queued.stdout.strip():
            return
        if time.monotonic() > deadline:
            cluster.run("scancel", *jobs)
            pytest.fail(f"jobs {jobs} still running after {timeout}s")
        time.sleep(0.3)


def tasks(cluster, job):
    """{array task id: {JobState, ExitCode, ...}} from scontrol (no accounting database here)."""
    shown = cluster.run("scontrol", "-o", "show", "job", job)
    assert shown.returncode == 0, shown.stderr
    records = [dict(field.split("=", 1) for field in line.split() if "=" in field) for line in shown.stdout.splitlines()]
    return {int(r["ArrayTaskId"]): r for r in records}


def log(run_dir, job, task):
    return Path(f"{run_dir}.logs/{job}_{task}.out").read_text()


def epochs_logged(text):
    return [int(e) for e in re.findall(r"^class \d+ seed \d+ epoch +(\d+) ", text, re.MULTILINE)]


def assert_same_trials(ours, theirs):
    """Every trial in both, with the same metrics, thresholds, training record and test scores
    (to the last bit); only times differ."""
    a, b = results_of(ours), results_of(theirs)
    assert sorted(a) == sorted(b) and a
    for name in a:
        for key in ("metrics", "thresholds", "epochs_trained", "best_epoch", "best_val_loss", "stopped_early",
                    "validation_stats", "test_scores", "targets", "counts"):
            assert a[name].get(key) == b[name].get(key), (name, key)
        history = [{k: v for k, v in r[name]["history"].items() if k != "seconds"} for r in (a, b)]  # columns
        assert history[0] == history[1] and len(history[0]["val_loss"]) == a[name]["epochs_trained"], name


def local_run(run_dir, *args):
    """The same trials run here by main.py, started (a Popen to finish())."""
    return subprocess.Popen([sys.executable, "main.py", "--dataset", "digits", "--model", "cascade", "--jobs", "2",
                             "--run-dir", str(run_dir), *map(str, args)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=CLEAN_ENV)


def finish(process, timeout=600):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]


def table(run_dir):
    done = subprocess.run([sys.executable, "main.py", "--table", str(run_dir)], cwd=REPO, capture_output=True,
                          text=True, env=CLEAN_ENV, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_local_cluster_starts_with_this_machine_idle_and_stops_without_a_daemon_left():
    need_slurm()
    cluster = Cluster()
    try:
        started = cluster.script("start")
        assert started.returncode == 0, started.stdout + started.stderr
        again = cluster.script("start")  # idempotent: the running cluster is kept
        assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr
        assert cluster.script("status").returncode == 0
        node = cluster.run("sinfo", "-h", "-N", "-o", "%t %c %G").stdout.split()
        assert node == ["idle", str(os.cpu_count()), "(null)"]  # the real CPU count, no GPU
        conf = (cluster.state / "slurm.conf").read_text()
        assert f"AuthInfo=socket={cluster.state}/munge/munge.socket.2" in conf and "/etc/slurm" not in conf
        assert len(cluster.our_processes()) >= 3  # munged, slurmctld, slurmd
    finally:
        stopped = cluster.script("stop")
        left = cluster.our_processes()
        status = cluster.script("status")
        shutil.rmtree(cluster.state, ignore_errors=True)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    assert not left, left
    assert status.returncode == 1 and status.stdout.count("not running") == 3, status.stdout


@pytest.fixture(scope="module")
def swept(cluster, data_dir, tmp_path_factory):
    """An array of 2 classes x 2 seeds on digits (4 tasks), submitted as docs/cluster.md says:
    (run folder, job id, the submitter's summary line)."""
    run_dir = tmp_path_factory.mktemp("slurm") / "cluster"
    # MAX_RUNNING=2: both seed-0 tasks start first, so the run's config lists the seeds as [0, 1] as
    # a local run does (the table's title shows the seeds in the order the tasks first wrote them)
    job, summary = submit(cluster, run_dir, "0 1", "0 1", f"--data-dir {data_dir} {QUICK}", MAX_RUNNING="2")
    wait(cluster, job)
    return run_dir, job, summary


def test_an_array_on_the_cluster_gives_the_table_of_the_same_trials_run_here(swept, cluster, data_dir, tmp_path):
    run_dir, job, summary = swept
    assert summary.startswith("digits / cascade: 4 trials (2 classes x 2 seeds)") and "GPUs per task: 0" in summary
    states = tasks(cluster, job)
    assert sorted(states) == [0, 1, 2, 3]  # the array sized from the classes and seeds
    assert {(s["JobState"], s["ExitCode"]) for s in states.values()} == {("COMPLETED", "0:0")}
    assert all("gpu" not in str(s.get("TresPerNode", "")) for s in states.values())  # no --gres on a node without GPUs
    for task, (c, s) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):  # task i: class i % 2, seed i // 2
        text = log(run_dir, job, task)
        assert text.startswith(f"task {task} of job {job} on ") and f"class {c}, seed {s} -> {run_dir}" in text
        assert f"class {c} seed {s}: recon AUROC" in text and "Traceback" not in text
    assert not list(Path(REPO).glob(f"slurm-{job}_*.out"))  # no log in the submit folder

    here = tmp_path / "here"
    finish(local_run(here, "--classes", "0", "1", "--seeds", "0", "1", "--data-dir", data_dir, *QUICK.split()))
    assert table(run_dir) == table(here)
    assert (run_dir / "table.csv").read_text() == (here / "table.csv").read_text()
    assert_same_trials(run_dir, here)


def test_a_task_whose_settings_differ_from_its_run_folder_fails_with_one_error_line(swept, cluster, data_dir, tmp_path):
    run_dir = copy_run(swept[0], tmp_path)
    files = lambda: {p: p.stat().st_mtime_ns for p in run_dir.rglob("[!.]*") if p.is_file()}  # not the locks
    before = files()
    job, _ = submit(cluster, run_dir, "0", "0", f"--data-dir {data_dir} {QUICK.replace('--epochs 3', '--epochs 4')}")
    wait(cluster, job)
    state = tasks(cluster, job)[0]
    assert (state["JobState"], state["ExitCode"]) == ("FAILED", "2:0")
    lines = log(run_dir, job, 0).strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [lines[-1]] and "Traceback" not in "\n".join(lines), lines[-5:]
    assert f"error: {run_dir} was made with other settings (epochs: folder 3 vs now 4)" in errors[0]
    assert files() == before  # nothing written


def test_an_array_larger_than_the_sweep_is_refused_by_every_task(cluster, tmp_path):
    """sbatch by hand with an array sized for other settings: tasks 0-1 for a sweep of one trial."""
    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    done = cluster.run("sbatch", "--parsable", "--array=0-1", f"--output={logs}/%A_%a.out", SWEEP, env={
        "DATASET": "digits", "CLASSES": "0", "SEEDS": "0", "RUN_DIR": str(run_dir), "PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip().split(";")[0]
    wait(cluster, job)
    states = tasks(cluster, job)
    assert sorted(states) == [0, 1]
    assert {(s["JobState"], s["ExitCode"]) for s in states.values()} == {("FAILED", "2:0")}
    for task in states:  # task 0 too: the array shows that its settings are not those it was sized for
        assert (logs / f"{job}_{task}.out").read_text().strip() == (
            "error: the array reaches task 1, but the sweep has 1 trials (1 classes x 1 seeds): submit it with "
            "scripts/slurm_submit.sh, or sbatch --array=0-0")
    assert not run_dir.exists()


def test_a_task_cancelled_while_training_resumes_from_its_checkpoint_and_ends_like_an_uninterrupted_run(
        cluster, data_dir, tmp_path):
    run_dir = tmp_path / "cluster"
    # long enough to be caught training; a checkpoint (last.pt) every epoch
    extra = (f"--data-dir {data_dir} --epochs 100 --patience 100 --min-steps 0 --patience-steps 0 "
             f"--checkpoint-seconds 0 --draw-figures false --device cpu")
    job, _ = submit(cluster, run_dir, "2", "0", extra)
    deadline, train_log = time.monotonic() + 300, run_dir / "class2_seed0" / "train.log"  # a line per epoch
    while max(epochs_logged(train_log.read_text() if train_log.exists() else ""), default=0) < 5:
        assert time.monotonic() < deadline and cluster.run("squeue", "-h", "-j", job).stdout.strip(), \
            "the task ended (or took too long) before its fifth epoch"
        time.sleep(0.1)
    time.sleep(1)  # a few epochs more: lines a buffered log had not yet written would be lost in the cancel
    assert cluster.run("scancel", job).returncode == 0
    wait(cluster, job)
    trial = run_dir / "class2_seed0"
    assert tasks(cluster, job)[0]["JobState"] == "CANCELLED"
    assert not (trial / "results.json").exists(), "the trial finished before it was cancelled"
    saved = torch.load(trial / "last.pt", weights_only=True)["state"]["epoch"]
    assert 5 <= saved < 100
    first = epochs_logged(train_log.read_text())
    # every epoch's line in the log as it ended: killed after the checkpoint of its last epoch, or after its line
    assert first == list(range(1, first[-1] + 1)) and first[-1] in (saved, saved - 1), (first, saved)

    here = tmp_path / "here"
    uninterrupted = local_run(here, "--classes", "2", "--seeds", "0", *extra.split())  # on the other core
    try:
        again, _ = submit(cluster, run_dir, "2", "0", extra)  # the same submission again
        wait(cluster, again)
    finally:
        finish(uninterrupted)
    state = tasks(cluster, again)[0]
    assert (state["JobState"], state["ExitCode"]) == ("COMPLETED", "0:0")
    assert epochs_logged(train_log.read_text()) == first + list(range(saved + 1, 101))  # from the checkpoint on
    assert (trial / "results.json").is_file() and not (trial / "last.pt").exists()
    assert_same_trials(run_dir, here)
    assert len(json.loads((run_dir / "config.json").read_text())["history"]) == 2  # both tasks


def test_two_arrays_on_one_run_folder_run_each_trial_once(cluster, data_dir, tmp_path):
    run_dir = tmp_path / "cluster"
    extra = f"--data-dir {data_dir} --epochs 60 --patience 60 --min-steps 0 --patience-steps 0 --draw-figures false --device cpu"
    first, _ = submit(cluster, run_dir, "3", "0", extra)
    second, _ = submit(cluster, run_dir, "3", "0", extra)  # at once: the node runs both tasks together
    wait(cluster, first, second)
    for job in (first, second):
        state = tasks(cluster, job)[0]
        assert (state["JobState"], state["ExitCode"]) == ("COMPLETED", "0:0")
    logs = [log(run_dir, job, 0) for job in (first, second)]
    trained = [text for text in logs if re.search(r"^class 3 seed 0: recon AUROC", text, re.MULTILINE)]
    skipped = [text for text in logs if "class 3 seed 0: skipped here, another process is running it" in text]
    assert len(trained) == 1 and len(skipped) == 1 and trained != skipped, logs
    trial = run_dir / "class3_seed0"
    assert epochs_logged((trial / "train.log").read_text()) == list(range(1, 61))  # each epoch once
    assert (trial / "results.json").is_file()
    assert len(list((trial / "tb").glob("events.out.tfevents.*"))) == 1  # one process trained it
    assert len(json.loads((run_dir / "config.json").read_text())["history"]) == 2  # both came
