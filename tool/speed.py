"""How a trial runs fast on its device: bfloat16 autocast (PRECISION), the channels-last memory
layout of convolutions on a CPU, and torch.compile (COMPILE); and whether this CPU does bf16 in
hardware at all (benchmarks/README.md measures each)."""
from contextlib import contextmanager

import torch
import torch.nn as nn

from tool.errors import UserError


PRECISIONS = ("fp32", "bf16")


def autocast(precision, device):
    """The precision of the training and validation passes: "bf16" is torch.autocast to bfloat16
    (matrix products and convolutions in bfloat16, losses, norms and softmax in float32; the
    weights and the optimiser stay float32); "fp32" changes nothing."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def cpu_lacks_bf16(device, cpuinfo="/proc/cpuinfo"):
    """True when `device` is a CPU that reports neither AVX-512 bf16 nor AMX bf16 (Linux's
    /proc/cpuinfo): there bf16 matrix products are emulated, and `cascade` trained 8.6x slower in
    bf16 than in fp32 side by side (an AVX2-only EPYC: 67 against 570 img/s,
    benchmarks/throughput.py). False when it cannot tell."""
    if torch.device(device).type != "cpu":
        return False
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return False
    return flags is not None and not {"avx512_bf16", "amx_bf16"} & set(flags)


def uses_channels_last(model, device):
    """oneDNN's convolutions are faster on channels-last tensors on a CPU (~1.15x for the conv
    presets): training converts conv models to it (scores are computed in the usual layout)."""
    return torch.device(device).type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules())


def compile_model(model):
    """torch.compile (inductor) of the encoder's and decoder's forward, set on the modules
    themselves so that state_dict keys stay as they are; the memory stays eager (its forgetting
    draws from torch's generator exactly as without compilation)."""
    for part in (model.encoder, model.decoder):
        part.forward = torch.compile(part.forward)


def uncompile_model(model):
    for part in (model.encoder, model.decoder):
        del part.forward  # the class's own forward again


@contextmanager
def compile_errors(compiling):
    """torch.compile's failures as one UserError: it compiles at the first step, where a missing C++
    compiler shows."""
    try:
        yield
    except Exception as error:
        if compiling and type(error).__module__.startswith(("torch._dynamo", "torch._inductor")):
            first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
            raise UserError(f"torch.compile could not compile the model ({type(error).__name__}: {first}). It needs "
                            f"a working C++ compiler (CXX) on a CPU; or train without it: --compile false.") from None
        raise
