"""Folders that several processes share: a lock file per run folder and trial (filelock: an OS
lock, gone with the process, even after kill -9), and hidden staging folders named by their
writer's process id, so that the next writer removes only those of dead processes."""
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from tool.io import _UMASK, WriteError, make_dir, write_reason


# a staging folder of staging_dir: "." + the target's name + "." + the writer's process id + "." +
# mkdtemp's 8 random characters + ".tmp"
STAGING_DIR = re.compile(r"\.(?P<target>.+)\.(?P<pid>[0-9]+)\.[a-z0-9_]{8}\.tmp")


def staging_dir(parent, name):
    """A new hidden folder in `parent` to build the folder `name` in before it is renamed into
    place (an export, a prepared dataset), with the usual permissions (mkdtemp's are 0700). The
    staging folders of `name` that a killed process left there (its process id no longer runs)
    are removed first; those of a process still running are left alone."""
    parent = make_dir(parent)
    for path in parent.iterdir():
        match = STAGING_DIR.fullmatch(path.name)
        if match and match["target"] == name and path.is_dir() and not path.is_symlink() \
                and not _process_runs(int(match["pid"])):
            shutil.rmtree(path, ignore_errors=True)
    try:
        folder = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.{os.getpid()}.", suffix=".tmp"))
        os.chmod(folder, 0o777 & ~_UMASK)
    except OSError as error:
        raise WriteError(parent / name, *write_reason(error)) from None
    return folder


def _process_runs(pid):
    """Whether a process with this id runs on this machine."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # it runs (as another user), or cannot be told: leave its folder alone
    return True


@contextmanager
def file_lock(path, blocking=True):
    """Hold the lock file `path` (filelock: an OS lock, released when the process ends, even by
    kill -9). Yields True once held; with blocking=False, yields False at once when another process
    holds it. A lock file that cannot be created is a WriteError."""
    import filelock

    lock = filelock.FileLock(str(path))
    try:
        lock.acquire(blocking=blocking)
        held = True
    except filelock.Timeout:
        held = False
    except OSError as error:
        raise WriteError(path, *write_reason(error)) from None
    try:
        yield held
    finally:
        if held:
            lock.release()
