"""Reading and writing files safely: atomic writes, loaders that never run code from a file and
name the file in every error, and the provenance recorded beside every result."""
import json
import os
import pickle
import platform
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from tool.errors import UserError

REPO = Path(__file__).resolve().parent.parent
_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic(path, write):
    """Write through `write(file_object)` into a temp file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj, path):
    _atomic(path, lambda f: torch.save(obj, f))


def load_checkpoint(path, device="cpu", what_to_do="Train it again."):
    """A checkpoint this code wrote, loaded with torch.load(weights_only=True): tensors, numbers,
    strings and containers only, so a forged file can never run code. Anything else is a
    UserError naming the file and what to do."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            pickle.UnpicklingError) as error:
        raise UserError(f"{path} is not a checkpoint this code wrote, or it is truncated or corrupt "
                        f"({type(error).__name__}). {what_to_do}") from None


def read_json(path, what_to_do):
    """The JSON in `path`; a missing, unreadable, truncated or malformed file is a UserError that
    names it and says `what_to_do`."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{path} cannot be read ({type(error).__name__}: {error}). {what_to_do}") from None


def atomic_write_bytes(path, data):
    _atomic(path, lambda f: f.write(data))


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def git_commit():
    """The code's git commit (with '-dirty' when the tree has changes), or 'unknown' outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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
        "torch_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
    }
