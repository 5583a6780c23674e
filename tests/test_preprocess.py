"""Tests of preprocess.py: its command line, the table of datasets, exit code 2 and one message for bad input."""
import os
import subprocess
import sys

import pytest

import preprocess
from conftest import NAME, command, files_in, one_error, write_idx_raw
from tool.data.datasets import DATASETS, load_dataset, processed_dir, raw_dir
from tool.errors import UserError
from tool.data.prepare import find_raw


def run_cli(repo, *args):
    return subprocess.run([sys.executable, "preprocess.py", *args], cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)


def assert_clean_failure(result, *texts):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    for text in texts:
        assert text in result.stderr


def truncate_idx_images(root):
    """MNIST raw files in root whose training images lose their last 100 bytes -> that file."""
    write_idx_raw(root)
    images = raw_dir("mnist", root) / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    return images


def table_rows(stdout):
    """{dataset: its row's cells, each cell's wrapped lines joined by spaces, joined by ' | '} of
    preprocess.py's table."""
    rows, name = {}, None
    for line in stdout.splitlines():
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.split("|")[1:-1]]
            name = cells[0] or name
            parts = rows.setdefault(name, [[] for _ in cells])
            for part, cell in zip(parts, cells):
                part.append(cell)
    return {name: " | ".join(" ".join(filter(None, part)) for part in parts) for name, parts in rows.items()}


def test_cli_unknown_dataset(repo, tmp_path):
    result = run_cli(repo, "--dataset", "imagenet", "--data-dir", str(tmp_path))
    assert_clean_failure(result, "unknown dataset 'imagenet'", "Valid: mnist, fmnist, kmnist, cifar10, digits")
    assert files_in(tmp_path) == []
    with pytest.raises(UserError, match="unknown dataset 'imagenet'. Valid: mnist, fmnist"):
        load_dataset("imagenet", tmp_path)


def test_cli_missing_dataset(repo, tmp_path):
    result = run_cli(repo, "--dataset", "mnist", "--data-dir", str(tmp_path))
    assert_clean_failure(result, "MNIST raw files not found", f"looked in {raw_dir('mnist', tmp_path)}",
                         "python preprocess.py --dataset mnist --download")
    assert files_in(tmp_path) == []


def test_cli_truncated_idx_file(repo, tmp_path):
    images = truncate_idx_images(tmp_path)
    result = run_cli(repo, "--dataset", "mnist", "--data-dir", str(tmp_path))
    assert_clean_failure(result, str(images), "truncated or corrupt")
    assert files_in(processed_dir("mnist", tmp_path)) == []


def test_cli_without_arguments_prints_the_table(repo, tmp_path):
    result = run_cli(repo, "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    table = table_rows(result.stdout)
    for name in ("mnist", "kmnist", "cifar10"):
        assert "missing" in table[name] and f"python preprocess.py --dataset {name} --download" in table[name]
    assert "| prepared" in table["digits"]
    assert load_dataset("digits", tmp_path).shape == (1, 8, 8)
    # fmnist depends on this machine: prepared from the Debian package when installed, else missing
    assert ("| prepared" in table["fmnist"]) == (find_raw(DATASETS["fmnist"], tmp_path / "nowhere") is not None)


@pytest.mark.parametrize("columns", [60, 100])
def test_the_table_fits_the_terminal_and_never_splits_a_flag(repo, tmp_path, columns):
    """The advice wraps between words, one way a line, so that the table fits the terminal's
    width (it was over 300 characters wide); every flag stays whole for copying."""
    result = subprocess.run([sys.executable, "preprocess.py", "--data-dir", str(tmp_path / "data")], cwd=repo,
                            capture_output=True, text=True, env={**os.environ, "COLUMNS": str(columns)}, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith(("|", "+"))]
    assert lines and max(map(len, lines)) <= columns, "\n".join(lines)
    assert not any(line.rstrip(" |").endswith("--") for line in lines)
    assert "python preprocess.py --dataset kmnist --download" in table_rows(result.stdout)["kmnist"]


def test_cli_without_arguments_reports_a_broken_dataset_and_prepares_the_rest(repo, tmp_path):
    truncate_idx_images(tmp_path)
    result = run_cli(repo, "--data-dir", str(tmp_path))
    assert_clean_failure(result, "could not prepare mnist")
    table = table_rows(result.stdout)
    assert "failed" in table["mnist"] and "truncated or corrupt" in table["mnist"]
    assert "| prepared" in table["digits"]  # the broken mnist did not stop the datasets after it
    assert files_in(processed_dir("mnist", tmp_path)) == []


def test_folder_flags_need_dataset_folder(capsys):
    with pytest.raises(SystemExit) as exit_:
        preprocess.main(["--path", "somewhere", "--name", NAME])
    assert exit_.value.code == 2
    assert "--path, --name can only be used with --dataset folder" in capsys.readouterr().err


def test_command_line_errors_exit_2_without_a_traceback(tmp_path):
    one_error(command("preprocess.py", "--dataset", "folder", "--path", tmp_path / "nowhere", "--name", NAME,
                      "--data-dir", tmp_path / "data", timeout=120), "no such folder")
    assert list(tmp_path.iterdir()) == []
