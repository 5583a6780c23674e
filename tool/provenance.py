"""The provenance recorded beside every result: the code's commit and a hash of its source, the
library versions, and the machine facts that tell two machines' trials apart."""
import hashlib
import os
import platform
import re
import subprocess
from pathlib import Path

import numpy as np
import torch

from tool.io import REPO


def git_commit():
    """The code's git commit (with '-dirty' when the tree has changes). Where there is no git
    repository (a copy of the working tree on another machine), the commit named by the
    environment variable CASCADE_GIT_COMMIT, marked "(declared)": source_sha256 beside it lets
    anyone check the code was that commit's; else 'unknown'."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        declared = os.environ.get("CASCADE_GIT_COMMIT", "")
        return f"{declared} (declared)" if re.fullmatch(r"[0-9a-f]{40}", declared) else "unknown"


SOURCE_FILES = ("main.py", "score.py", "preprocess.py", "models/**/*.py", "tool/**/*.py")  # what computes results


def source_sha256(root=REPO):
    """One sha256 of the code that computes results (SOURCE_FILES under `root`, by path and bytes):
    the same for a checkout of a commit and for a copy of it elsewhere."""
    digest = hashlib.sha256()
    for path in sorted({p for pattern in SOURCE_FILES for p in Path(root).glob(pattern)}):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cpu_facts(cpuinfo="/proc/cpuinfo"):
    """The CPU's model, the instruction set ATen dispatches to, and its bf16 and AMX flags: two
    machines of one kind can give the same seed different trials, and these tell them apart."""
    model, flags = None, set()
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("model name") and model is None:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: None)()
    return {"cpu": model, "cpu_capability": capability,
            "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"})}


def environment():
    """Library versions and machine facts recorded beside every result."""
    import sklearn

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        **cpu_facts(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "source_sha256": source_sha256(),
    }
