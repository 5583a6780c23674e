"""Running many trials: one after another, or JOBS at a time in worker processes, each on its
own CPU threads or GPU. A trial's scores do not depend on how many run beside it."""
import os
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch
from tqdm import tqdm

from tool.datasets import load_dataset


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
    """run_trial(config, ds, c, seed, run_dir, device, quiet) for every (c, seed) in `trials`:
    in this process when one job runs at a time, else in worker processes (quiet logs)."""
    jobs = trial_jobs(config, len(trials), device)
    if jobs == 1:
        torch.set_num_threads(trial_threads(config, 1, device))
        for c, s in trials:
            run_trial(config, ds, c, s, run_dir, device)
        return
    import multiprocessing as mp

    if device.startswith("cuda") and torch.cuda.device_count() > 1 and config["device"] == "auto":
        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    else:
        devices = [device]
    threads = trial_threads(config, jobs, device)
    print(f"{jobs} trials at a time on {', '.join(devices)}, {threads} CPU thread(s) each")
    context = mp.get_context("spawn")
    counter = context.Value("i", 0)
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init,
                             initargs=(threads, devices, counter)) as pool:
        futures = {pool.submit(_worker, run_trial, config, c, s, str(run_dir)): (c, s) for c, s in trials}
        try:
            with tqdm(total=len(futures), desc="trials", unit="trial", disable=None) as bar:
                for future in as_completed(futures):
                    c, s = futures[future]
                    results = future.result()  # None: skipped, another process runs it
                    tqdm.write(f"class {c} seed {s}: " + ("skipped, another process runs it" if results is None else
                                                          "  ".join(f"{name} AUROC {m['auroc']:.4f}"
                                                                    for name, m in results["metrics"].items())))
                    bar.update(1)
        except BaseException:  # a trial failed or Ctrl-C: start no further trial, let running ones end
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _worker_init(threads, devices, counter):
    torch.set_num_threads(threads)
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    os.environ["CASCADE_WORKER_DEVICE"] = devices[index % len(devices)]


def _worker(run_trial, config, c, seed, run_dir):
    device = os.environ.get("CASCADE_WORKER_DEVICE", "cpu")
    ds = load_dataset(config["dataset"], config["data_dir"])
    return run_trial(config, ds, c, seed, run_dir, device, quiet=True)
