"""Reading and writing files safely: atomic writes, and loaders that never run code from a file,
read only regular files of a bounded size, and name the file in every error (locks and staging
folders: tool/locks.py; the provenance recorded beside every result: tool/provenance.py).

Every file the project writes goes through `_atomic` (a temp file beside the target, renamed into
place), every folder it creates through `make_dir`: a full disk, a read-only folder or a file
standing where a folder must be is one `WriteError` (a UserError) naming the file and what to do,
and leaves no temp file and no half-written file behind. Every JSON file and checkpoint it reads
goes through `read_json` and `load_checkpoint`.
"""
import errno
import json
import os
import pickle
import re
import stat
import tempfile
import zipfile
from pathlib import Path

import torch

from tool.errors import Terminated, UserError, terminating

REPO = Path(__file__).resolve().parent.parent
_UMASK = os.umask(0)
os.umask(_UMASK)
# a temp file of _atomic: "." + the target's name + "." + mkstemp's 8 random characters + ".tmp"
TEMP_FILE = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp")


class WriteError(UserError):
    """A file or folder could not be written; `path` is what was being written, `reason` why."""

    def __init__(self, path, reason, fix):
        super().__init__(f"cannot write {path} ({reason}): {fix}.")
        self.path, self.reason, self.fix = Path(path), reason, fix


def write_reason(error):
    """(why, what to do) for an error raised while writing."""
    cause = error
    while cause is not None and getattr(cause, "errno", None) is None:  # torch.save's RuntimeError may hide an OSError
        cause = cause.__context__
    code = getattr(cause, "errno", None)
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return "no space left on the device", "free some space or choose another folder"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "the folder is not writable", "make it writable or choose another folder"
    if code in (errno.EEXIST, errno.ENOTDIR):
        return "a file stands where a folder must be", "choose another folder, or move that file away"
    if code == errno.ENAMETOOLONG:
        return "a name is too long for the file system", "choose a shorter folder or file name"
    if code == errno.EISDIR:
        return "a folder stands where a file must be", "remove or move that folder"
    if isinstance(error, RuntimeError):  # torch.save reports a failed write as "[enforce fail at ...]"
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"torch.save failed: {text}; the disk is probably full", "free some space or choose another folder"
    error = cause or error
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}", "check the folder (space, permissions), or choose another one"


def make_dir(path):
    """Create the folder `path` and its parents (nothing when it exists); a WriteError otherwise."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WriteError(path, *write_reason(error)) from None
    return Path(path)


def check_target(path):
    """Refuse (a UserError) to write `path` when something other than a regular file stands there:
    a folder, a device node, a FIFO, a socket (a rename would replace it: as root, `/dev/full`
    itself). A symbolic link counts as what it points to; a dangling one, or no file, is fine."""
    path = Path(path)
    if "\0" in str(path):
        raise UserError(f"cannot write {str(path)!r}: a file name cannot hold a null byte.")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError as error:  # a symlink loop, a name too long, a folder on the way that is a file
        raise WriteError(path, *write_reason(error)) from None
    if not stat.S_ISREG(mode):
        what = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a device, a FIFO or a socket)"
        raise UserError(f"cannot write {path}: it is {what}, and a write never replaces one. Give the path of a "
                        f"file (new or an existing regular file).")
    return path


def _atomic(path, write, errors=(OSError,), exclusive=False):
    """Write through `write(file_object)` into a temp file beside `path`, then rename it into place
    (exclusive=True: link it into place, which fails with FileExistsError when `path` exists, so
    two processes never overwrite each other's file; `path` then never exists half-written either).

    Any of `errors` (a full disk, a folder that is not writable) is a WriteError naming `path`; the
    temp file is removed whatever happens, and `path` keeps its old content (or stays absent). A
    target that is not a regular file (check_target) is refused before anything is written."""
    path = Path(path)
    check_target(path)  # before make_dir: a null byte in the name is refused before any folder is made
    make_dir(path.parent)
    check_target(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            _link_new(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if terminating() and not isinstance(error, KeyboardInterrupt):  # SIGTERM mid-write, swallowed by torch.save
            raise Terminated() from None
        if isinstance(error, errors) and not isinstance(error, FileExistsError):
            raise WriteError(path, *write_reason(error)) from None
        raise


def _link_new(tmp, path):
    """Put the finished temp file `tmp` at `path` only if nothing is there (FileExistsError
    otherwise): a hard link where the filesystem has them, else an exclusive create of the name
    that the temp file is then renamed over (the name is ours from that moment on)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        os.replace(tmp, path)
    else:
        os.unlink(tmp)


def remove_temp_files(folder):
    """Remove the temp files `_atomic` left in `folder` (a process killed while writing): only
    names of its own pattern, .<name>.<8 random characters>.tmp; returns their names. Call it only
    where no other process is writing (a trial folder whose lock is held)."""
    removed = []
    for path in Path(folder).iterdir() if Path(folder).is_dir() else ():
        if TEMP_FILE.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            try:
                path.unlink(missing_ok=True)
                removed.append(path.name)
            except OSError:
                pass  # a leftover that cannot be removed is harmless: never written over, never read
    return removed


def atomic_torch_save(obj, path):
    """torch.save through `_atomic`; torch.save reports a failed write (a full disk) as a
    RuntimeError ("[enforce fail at inline_container.cc ...]"), which is a WriteError too."""
    _atomic(path, lambda f: torch.save(obj, f), errors=(OSError, RuntimeError))


def load_checkpoint(path, device="cpu", what_to_do="Train it again.", what="a checkpoint this code wrote"):
    """A checkpoint this code wrote, loaded with torch.load(weights_only=True): tensors, numbers,
    strings and containers only, so a forged file can never run code. Anything else is a
    UserError naming the file and what to do."""
    with open_archive(path, what, what_to_do, expansion=1) as file:  # torch.save stores, never compresses
        try:
            return torch.load(file, map_location=device, weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                MemoryError, OverflowError, RecursionError, pickle.UnpicklingError) as error:
            raise UserError(f"{path} is not {what}, or it is truncated or corrupt "
                            f"({type(error).__name__}). {what_to_do}") from None


ARCHIVE_SLACK = 16 * 2 ** 20  # bytes a zip archive may unpack to beyond `expansion` times its size


def open_archive(path, what, what_to_do, expansion):
    """`path` open for reading in binary, once it is known to be a regular file (a FIFO would block
    its reader forever) and, if it is a zip archive (torch.save's files, numpy's .npz), one whose
    entries unpack to at most `expansion` times its size plus ARCHIVE_SLACK: a file of a few KB
    that unpacks to gigabytes (a zip bomb) is refused before anything is unpacked. A UserError
    names the file and says `what_to_do`."""
    try:
        file = os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb")
    except OSError as error:
        raise UserError(f"{path} cannot be read ({error.strerror or type(error).__name__}). {what_to_do}") from None
    try:
        info = os.fstat(file.fileno())
        size = info.st_size
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{path} is not {what}: it is not a regular file (a folder, device, FIFO or socket). "
                            f"{what_to_do}")
        os.set_blocking(file.fileno(), True)
        if zipfile.is_zipfile(file):
            try:
                with zipfile.ZipFile(file) as archive:
                    unpacked = sum(entry.file_size for entry in archive.infolist())
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
                raise UserError(f"{path} is not {what}, or it is truncated or corrupt ({type(error).__name__}). "
                                f"{what_to_do}") from None
            if unpacked > expansion * size + ARCHIVE_SLACK:
                raise UserError(f"{path} is not {what}: its {size / 2 ** 20:.1f} MB unpack to "
                                f"{unpacked / 2 ** 20:.0f} MB, far more than such a file holds. {what_to_do}")
        file.seek(0)
        return file
    except BaseException:
        file.close()
        raise


MAX_READ_BYTES = 256 * 2 ** 20  # a JSON or config file larger than this is not one this code wrote


def read_small_file(path, what_to_do, limit=MAX_READ_BYTES):
    """The bytes of a regular file of at most `limit` bytes; a FIFO, a device, a folder (which
    would block or never end) or a larger file is a UserError naming it and saying `what_to_do`.
    The file is opened first and then checked, so that what is checked is what is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens without waiting for a writer
    except OSError as error:
        raise UserError(f"{path} cannot be read ({error.strerror or type(error).__name__}). {what_to_do}") from None
    return _read_open_file(fd, path, what_to_do, limit)


def read_own_file(root, relative, what_to_do, limit=MAX_READ_BYTES):
    """read_small_file of root/relative, where no part of `relative` may be a symbolic link: each is
    opened with O_NOFOLLOW below the one before, so a link swapped in while a folder is read (to copy
    a secret file into results/) is refused, not followed."""
    path, fds = Path(root) / relative, []
    try:
        fds.append(os.open(root, os.O_RDONLY | os.O_DIRECTORY))
        *folders, name = Path(relative).parts
        for part in folders:
            fds.append(os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fds[-1]))
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fds[-1])
    except OSError as error:
        linked = error.errno in (errno.ELOOP, errno.ENOTDIR)
        raise UserError(f"{path} " + ("is or lies below a symbolic link" if linked else "cannot be read ("
                        f"{error.strerror or type(error).__name__})") + f". {what_to_do}") from None
    finally:
        for opened in fds:
            os.close(opened)
    return _read_open_file(fd, path, what_to_do, limit)


def _read_open_file(fd, path, what_to_do, limit):
    """The bytes of the open file `fd` (closed here), a regular file of at most `limit` bytes."""
    try:
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise UserError(f"{path} is not a regular file (a folder, device, FIFO or socket). {what_to_do}")
            if info.st_size > limit:
                raise UserError(f"{path} is {info.st_size / 2 ** 20:.0f} MB, larger than such a file can be "
                                f"({limit >> 20} MB). {what_to_do}")
            data = file.read(limit + 1)
    except OSError as error:
        raise UserError(f"{path} cannot be read ({error.strerror or type(error).__name__}). {what_to_do}") from None
    if len(data) > limit:  # it grew while it was read
        raise UserError(f"{path} is larger than such a file can be ({limit >> 20} MB). {what_to_do}")
    return data


def read_json(path, what_to_do):
    """The JSON in `path` (never code: JSON holds data only); a missing, unreadable, truncated,
    malformed or oversized file, or one that is not a regular file, is a UserError that names it
    and says `what_to_do`. Callers check the shape of what they get."""
    data = read_small_file(path, what_to_do)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is truncated or corrupt (not UTF-8 text). {what_to_do}") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        raise UserError(f"{path} is truncated or corrupt (not valid JSON: {type(error).__name__}: "
                        f"{str(error)[:100]}). {what_to_do}") from None


def atomic_write_bytes(path, data):
    _atomic(path, lambda f: f.write(data))


def create_new_file(path, data):
    """Write `data` to `path`, which must not exist: FileExistsError when it does (or appears
    while writing: another process got there first), and nothing is overwritten."""
    _atomic(path, lambda f: f.write(data), exclusive=True)


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def file_sha256(path):
    """The sha256 of a file's bytes, in hex (None for a file that is not there)."""
    import hashlib

    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except FileNotFoundError:
        return None
