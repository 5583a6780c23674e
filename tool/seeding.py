"""One seed for everything: Python's, numpy's and torch's generators, deterministic algorithms,
and the generators' states as a checkpoint keeps them (so a resumed trial draws what an
uninterrupted one would)."""
import os
import random

import numpy as np
import torch


def seed_everything(seed):
    """One seed for Python, numpy and torch (every device), with deterministic algorithms on.

    The same seed on the same machine gives bit-identical scores.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS determinism (must precede CUDA use)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    torch.use_deterministic_algorithms(True)
    # Deterministic mode also fills every new tensor with NaN, a guard against ops that read
    # uninitialised memory (none here); PyTorch's docs say to turn it off for valid programs. It
    # cost up to ~13% of a conv training step on the CPU and changes no result.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = False


def rng_state():
    """Python's, numpy's and torch's RNG states in types torch.load(weights_only=True) accepts
    (tensors, lists, numbers, strings): a checkpoint never needs the unpickler to run code."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
