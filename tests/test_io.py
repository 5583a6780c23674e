"""Tests of tool/io.py: a corrupt or forged checkpoint is a clear error and never runs code; the
one atomic writer on a full disk and a read-only folder; the one JSON reader; temp files; locks."""
import os

import pytest
import torch

import faults
import main
from conftest import leftovers, run_main
from tool.errors import UserError
from tool.locks import file_lock
from tool.io import (WriteError, atomic_torch_save, atomic_write_json, atomic_write_text, make_dir,
                     read_json, remove_temp_files, write_reason)


def test_corrupt_checkpoint_is_a_clear_error(data_dir, tmp_path):
    run_dir = run_main(data_dir, tmp_path, "--classes", "9", "--seeds", "0", "--epochs", "1")
    (run_dir / "class9_seed0" / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt"):
        main.run(["--eval-only", str(run_dir)])


class _Forged:
    """Unpickling this runs code: it creates `marker` (what a forged checkpoint could do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("forgery", ["whole file", "hidden key in a real checkpoint", "truncated"])
def test_resume_never_runs_code_from_a_checkpoint(data_dir, tmp_path, forgery):
    run_dir = run_main(data_dir, tmp_path, "--classes", "5", "--seeds", "0", "--epochs", "1")
    trial = run_dir / "class5_seed0"
    real = trial / "last.pt"
    torch.save({"model": torch.load(trial / "best.pt", weights_only=True)["model"]}, real)  # a real checkpoint
    (trial / "results.json").unlink()  # the trial is unfinished again: --resume reads last.pt
    marker = tmp_path / "marker"
    if forgery == "whole file":
        torch.save(_Forged(marker), real)
    elif forgery == "hidden key in a real checkpoint":
        torch.save({**torch.load(real, weights_only=True), "extra": _Forged(marker)}, real)
    else:
        real.write_bytes(real.read_bytes()[:1000])
    with pytest.raises(UserError, match="last.pt is not a checkpoint this code wrote.*Delete it"):
        main.run(["--resume", str(run_dir)])
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# The one atomic writer: a full disk or a read-only folder is one WriteError naming the file and
# what to do; no temp file stays, the old content stays
# ---------------------------------------------------------------------------------------------
def test_a_full_disk_is_one_error_naming_the_file_and_the_old_file_stays(tmp_path):
    target, checkpoint = tmp_path / "table.md", tmp_path / "best.pt"
    target.write_text("old\n")
    with faults.full_disk(tmp_path):
        for write, path in ((lambda: atomic_write_text(target, "new\n" * 10_000), target),
                            (lambda: atomic_torch_save({"w": torch.zeros(100_000)}, checkpoint), checkpoint)):
            with pytest.raises(WriteError) as error:
                write()
            assert str(error.value).startswith(f"cannot write {path} (")
            assert str(error.value).endswith("free some space or choose another folder.")
            assert error.value.path == path
    assert target.read_text() == "old\n" and not checkpoint.exists()
    assert leftovers(tmp_path) == []


def test_torch_save_on_a_full_disk_raises_a_runtime_error_that_becomes_a_write_error(tmp_path):
    """torch.save reports a failed write as RuntimeError('[enforce fail at inline_container.cc ...]'),
    not OSError: the atomic writer catches it too."""
    with faults.full_disk(tmp_path):
        f = os.fdopen(os.open(tmp_path / "raw.pt", os.O_WRONLY | os.O_CREAT), "wb")
        try:
            with pytest.raises(RuntimeError, match="enforce fail"):
                torch.save({"w": torch.zeros(100_000)}, f)
        finally:
            with pytest.raises(OSError):  # and closing the file then flushes into the full disk
                f.close()
        (tmp_path / "raw.pt").unlink()
        with pytest.raises(WriteError, match=r"best.pt \(no space left on the device\): free some space or choose "
                                             r"another folder"):
            atomic_torch_save({"w": torch.zeros(100_000)}, tmp_path / "best.pt")
        try:  # what the atomic writer makes of torch.save's RuntimeError alone
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        except RuntimeError as error:
            assert write_reason(error) == ("torch.save failed: [enforce fail at inline_container.cc:672] . unexpected "
                                           "pos 704 vs 598; the disk is probably full",
                                           "free some space or choose another folder")
    assert leftovers(tmp_path) == []


def test_a_read_only_folder_is_one_error(tmp_path):
    (tmp_path / "old.json").write_text("{}")
    with faults.read_only(tmp_path):
        with pytest.raises(WriteError, match=r"old.json \(the folder is not writable\): make it writable or choose "
                                             r"another folder"):
            atomic_write_json(tmp_path / "old.json", {"new": 1})
        with pytest.raises(WriteError, match=r"cannot write .*new/deeper \(the folder is not writable\)"):
            make_dir(tmp_path / "new" / "deeper")
    assert (tmp_path / "old.json").read_text() == "{}" and not (tmp_path / "new").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder: tests/faults.py simulates it")
def test_a_really_read_only_folder_is_one_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(WriteError, match="the folder is not writable"):
            atomic_write_text(folder / "table.md", "x")
    finally:
        folder.chmod(0o755)


def test_a_file_where_a_folder_must_be(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(WriteError, match=r"a file stands where a folder must be\): choose another folder"):
        atomic_write_text(tmp_path / "file" / "table.md", "x")


# ---------------------------------------------------------------------------------------------
# The one JSON reader
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, message", [
    (b'{"metrics": {"auroc": 0.9', "is truncated or corrupt (not valid JSON"),
    (b"\xff\xfe{}", "is truncated or corrupt (not UTF-8 text)"),
    (b"[" * 100_000 + b"]" * 100_000, "is truncated or corrupt (not valid JSON: RecursionError"),
    (None, "cannot be read (No such file or directory)"),
], ids=["truncated", "not-utf8", "nested", "missing"])
def test_read_json_names_the_file_and_what_to_do(tmp_path, content, message):
    path = tmp_path / "results.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError) as error:
        read_json(path, "Do this.")
    assert str(error.value).startswith(f"{path} {message}") and str(error.value).endswith("Do this.")


# ---------------------------------------------------------------------------------------------
# Stale temp files and locks
# ---------------------------------------------------------------------------------------------
def test_remove_temp_files_removes_only_the_writers_own_temp_files(tmp_path):
    own = [".last.pt.k2j4_x9a.tmp", ".results.json.abcdefgh.tmp"]
    others = ["last.pt", "notes.tmp", ".last.pt.tmp", ".last.pt.TOOLONG12.tmp", ".x.ABCDEFGH.tmp", "tb"]
    for name in own + others[:-1]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "tb").mkdir()
    (tmp_path / ".dir.abcdefgh.tmp").mkdir()  # a folder of that name is not the writer's
    assert sorted(remove_temp_files(tmp_path)) == sorted(own)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others + [".dir.abcdefgh.tmp"])


def test_file_lock_is_held_by_one_holder_at_a_time(tmp_path):
    lock = tmp_path / ".lock"
    with file_lock(lock) as first:
        assert first
        with file_lock(lock, blocking=False) as second:  # another open of the lock file: as another process
            assert not second
    with file_lock(lock, blocking=False) as third:
        assert third


def test_torch_saves_own_runtime_error_is_a_write_error_and_the_old_checkpoint_stays(tmp_path, monkeypatch):
    """What issue 12 saw on a full disk: torch.save wrote part of the file, then raised
    RuntimeError('[enforce fail ...]'), which escaped every `except OSError`."""
    def save_onto_a_full_disk(obj, f):
        f.write(b"PK\x03\x04 the first bytes")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", save_onto_a_full_disk)
    (tmp_path / "last.pt").write_bytes(b"the previous epoch")
    with pytest.raises(WriteError) as error:
        atomic_torch_save({"w": torch.zeros(3)}, tmp_path / "last.pt")
    assert str(error.value) == (f"cannot write {tmp_path / 'last.pt'} (torch.save failed: [enforce fail at "
                                f"inline_container.cc:672] . unexpected pos 704 vs 598; the disk is probably full): "
                                f"free some space or choose another folder.")
    assert (tmp_path / "last.pt").read_bytes() == b"the previous epoch" and leftovers(tmp_path) == []
