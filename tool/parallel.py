"""Running many trials: one after another, or JOBS at a time in worker processes, each on its
own CPU threads or GPU. A trial's scores do not depend on how many run beside it."""
import multiprocessing as mp
import os
import signal
import threading

import torch
from tqdm import tqdm

from tool.data.datasets import load_dataset
from tool.errors import UserError, note_sigterm, terminating

KILL_AFTER_S = 30  # a worker still alive this long after the pool's SIGTERM is killed (SIGKILL)


def trial_threads(config, jobs, device="cpu"):
    """Torch CPU threads per trial: THREADS, or for 0 torch's default (OMP_NUM_THREADS, else the
    cores this process may use) split between the `jobs` trials run at once (1 each beside a GPU).
    Float sums depend on the thread count: a fixed THREADS makes scores independent of JOBS."""
    if config["threads"]:
        return config["threads"]
    if jobs == 1:
        return torch.get_num_threads()
    return max(1, torch.get_num_threads() // jobs) if device == "cpu" else 1


def trial_jobs(config, n_trials, device):
    """Trials run at once: JOBS, or for 0 one per GPU, or on a CPU the cores divided by THREADS."""
    if config["jobs"]:
        jobs = config["jobs"]
    elif device.startswith("cuda"):
        jobs = torch.cuda.device_count() if config["device"] == "auto" else 1
    elif device == "cpu":
        jobs = len(os.sched_getaffinity(0)) // config["threads"] if config["threads"] else 1
    else:
        jobs = 1
    return max(1, min(jobs, n_trials))


def run_trials(run_trial, config, ds, trials, run_dir, device):
    """run_trial(config, ds, c, seed, run_dir, device, log) for every (c, seed) in `trials`: in
    this process when one job runs at a time, else in worker processes. A failed
    trial, Ctrl-C or SIGTERM stops every worker at once (multiprocessing's Pool.terminate): none
    trains on with nobody to report to, their trial locks are released with them, and each
    interrupted trial resumes from its last.pt."""
    jobs = trial_jobs(config, len(trials), device)
    if jobs == 1:
        torch.set_num_threads(trial_threads(config, 1, device))
        with tqdm(total=len(trials), desc="trials", unit="trial", disable=None) as bar:  # a terminal only
            for c, s in trials:
                run_trial(config, ds, c, s, run_dir, device, log=tqdm.write)
                bar.update(1)
        return
    if device.startswith("cuda") and torch.cuda.device_count() > 1 and config["device"] == "auto":
        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    else:
        devices = [device]
    threads = trial_threads(config, jobs, device)
    print(f"{jobs} trials at a time on {', '.join(devices)}, {threads} CPU thread(s) each")
    context = mp.get_context("spawn")
    counter = context.Value("i", 0)
    others = set(context.active_children())

    def pool_workers():  # the pool's live workers, those it started in place of dead ones among them
        return set(context.active_children()) - others

    pool = context.Pool(jobs, initializer=_worker_init, initargs=(threads, devices, counter))
    workers = pool_workers()
    try:
        tasks = [(run_trial, config, c, s, str(run_dir)) for c, s in trials]
        finished = pool.imap_unordered(_worker, tasks)  # each worker logs its own trial's line
        with tqdm(total=len(tasks), desc="trials", unit="trial", disable=None) as bar:
            for _ in tasks:
                _next_trial(finished, workers, pool_workers, run_dir)
                bar.update(1)
        pool.close()
    except BaseException:  # a trial failed, Ctrl-C, SIGTERM: stop every worker now
        _terminate(pool, pool_workers())
        raise
    finally:
        pool.join()


def _next_trial(finished, workers, pool_workers, run_dir):
    """Wait for the next finished trial. A worker that died (the out-of-memory killer, kill -9)
    took its trial with it, and the pool, which starts a new worker in its place, would wait for
    that trial forever: a worker seen to end while trials run is an error. `workers` keeps every
    worker seen (a dead one leaves pool_workers())."""
    while True:
        try:
            return finished.next(timeout=1.0)
        except mp.TimeoutError:
            workers.update(pool_workers())
            dead = sorted(w.exitcode for w in workers if w.exitcode is not None)
            if dead:
                code = dead[0]
                if code >= 0:
                    how = f"exit code {code}"
                else:
                    how = f"killed by signal {-code}"
                    if code == -signal.SIGKILL:
                        how += " (SIGKILL: the out-of-memory killer sends it)"
                raise UserError(f"a worker process died ({how}), and its trial with it; the other trials were "
                                f"stopped. Their last.pt keeps their progress: continue with python main.py "
                                f"--resume {run_dir} (add --jobs 1 if memory ran out).")


def _terminate(pool, workers):
    """pool.terminate(): SIGTERM to every worker, then wait for each to end. A worker that outlives
    its SIGTERM (stuck in a call that never returns) would keep that wait, and the command, hanging
    forever: after KILL_AFTER_S it is killed. The OS frees its trial lock; its last.pt stays whole
    (atomic writes), and resuming removes the temp file it may leave."""
    timer = threading.Timer(KILL_AFTER_S, lambda: [w.kill() for w in workers if w.exitcode is None])
    timer.daemon = True
    timer.start()
    try:
        pool.terminate()
    finally:
        timer.cancel()


def _worker_init(threads, devices, counter):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent stops us
    # ... with SIGTERM (Pool.terminate), which unwinds the trial as SystemExit: its lock, its open files and the
    # semaphores tqdm made here are released before the process ends, and no traceback is printed
    signal.signal(signal.SIGTERM, _exit_quietly)
    torch.set_num_threads(threads)
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    os.environ["CASCADE_WORKER_DEVICE"] = devices[index % len(devices)]


def _exit_quietly(signum, frame):
    # a second SIGTERM (the pool's terminate() after the process group's) would otherwise land in the
    # exit's own cleanup, tqdm's atexit callback among it, and print a traceback there
    signal.signal(signum, signal.SIG_IGN)
    note_sigterm(signum)
    raise SystemExit(128 + signum)


def _worker(task):
    """One trial in a worker. After a SIGTERM the worker ends whatever the trial did with the
    SystemExit: torch.save's C++ writer swallows it and reports a failed write instead, and a
    worker that took that for the trial's error would wait for the next task, deaf to SIGTERM."""
    run_trial, config, c, seed, run_dir = task
    device = os.environ.get("CASCADE_WORKER_DEVICE", "cpu")
    try:
        ds = load_dataset(config["dataset"], config["data_dir"])
        return c, seed, run_trial(config, ds, c, seed, run_dir, device, log=_print)
    finally:
        if terminating():  # replaces the trial's result or error
            raise SystemExit(143) from None


def _print(text):
    print(text, flush=True)
