"""Faults the tests inject: a full disk and a read-only folder. The tests run as root (here and in
CI), where chmod stops no write, so the faults are made where the project meets the system.

    with full_disk(root): ...     every file the project writes below `root` gets its data sent to
                                  /dev/full: the kernel's own ENOSPC (and torch.save's RuntimeError)
    with read_only(root): ...     creating, replacing or removing anything below `root`: EACCES
    python tests/faults.py full-disk[:GLOB]|read-only ROOT SCRIPT [ARGS...]
                                  SCRIPT (main.py, score.py, preprocess.py) under the fault, as a
                                  command: for its exit code and what it prints (GLOB: only temp
                                  files of that name pattern, e.g. '.last.pt.*')
"""
import builtins
import errno
import fnmatch
import io
import os
import runpy
import sys
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _below(path, root):
    if isinstance(path, int):
        return False
    path = os.path.abspath(os.fsdecode(path))
    return path == root or path.startswith(root + os.sep)


@contextmanager
def _patched(patches):
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, replacement in patches:
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


@contextmanager
def full_disk(root, pattern="*"):
    """Files opened for writing below `root` through os.fdopen (how tool/io.py's atomic writer
    opens its temp file), whose name matches `pattern`, write to /dev/full instead: every write
    fails with ENOSPC."""
    root, real_fdopen, real_open = os.path.abspath(root), os.fdopen, builtins.open

    def fdopen(fd, mode="r", *args, **kwargs):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if any(c in mode for c in "wax+") and _below(path, root) and fnmatch.fnmatch(os.path.basename(path), pattern):
            os.close(fd)
            return real_open("/dev/full", mode.replace("x", "w"), *args, **kwargs)
        return real_fdopen(fd, mode, *args, **kwargs)

    with _patched([(os, "fdopen", fdopen)]):
        yield


@contextmanager
def read_only(root):
    """`root` and everything below it behave as on a read-only folder: creating, opening for
    writing, renaming into or out of, and removing raise PermissionError (EACCES)."""
    root = os.path.abspath(root)
    real = {name: getattr(os, name) for name in ("open", "mkdir", "replace", "rename", "unlink", "remove", "rmdir")}
    real_open, real_io_open = builtins.open, io.open

    def denied(path):
        raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))

    def os_open(path, flags, *args, **kwargs):
        if flags & _WRITE_FLAGS and _below(path, root) and kwargs.get("dir_fd") is None:
            denied(path)
        return real["open"](path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if _below(path, root) and kwargs.get("dir_fd") is None:
            if os.path.exists(path):
                raise FileExistsError(errno.EEXIST, "File exists", os.fsdecode(path))
            denied(path)
        return real["mkdir"](path, *args, **kwargs)

    def two_paths(name):
        def move(src, dst, *args, **kwargs):
            if _below(src, root) or _below(dst, root):
                denied(dst)
            return real[name](src, dst, *args, **kwargs)
        return move

    def one_path(name):
        def remove(path, *args, **kwargs):
            if _below(path, root) and kwargs.get("dir_fd") is None:
                denied(path)
            return real[name](path, *args, **kwargs)
        return remove

    def opener(original):
        def open_(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and _below(file, root):
                denied(file)
            return original(file, mode, *args, **kwargs)
        return open_

    with _patched([(os, "open", os_open), (os, "mkdir", mkdir), (os, "replace", two_paths("replace")),
                   (os, "rename", two_paths("rename")), (os, "unlink", one_path("unlink")),
                   (os, "remove", one_path("remove")), (os, "rmdir", one_path("rmdir")),
                   (builtins, "open", opener(real_open)), (io, "open", opener(real_io_open))]):
        yield


FAULTS = {"full-disk": full_disk, "read-only": read_only}

if __name__ == "__main__":
    fault, root, script, *arguments = sys.argv[1:]
    fault, *pattern = fault.split(":", 1)
    sys.path.insert(0, str(REPO))
    sys.argv = [script, *arguments]
    with FAULTS[fault](root, *pattern):
        runpy.run_path(str(REPO / script), run_name="__main__")
