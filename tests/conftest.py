"""Shared fixtures and helpers: repo on sys.path, prepared datasets, trained trials, raw files, model helpers."""
import gzip
import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `pytest` run without `python -m` still imports main, tool, models
    sys.path.insert(0, str(REPO))

import cv2  # noqa: E402

import main  # noqa: E402
import preprocess  # noqa: E402
from tool.report import figures  # noqa: E402
from tool.data.datasets import raw_dir  # noqa: E402
from tool.data.prepare import CIFAR_FILES, IDX_FILES, prepare  # noqa: E402


def model_config(**overrides):
    """main.py's model settings (its defaults, the paper's), with `overrides`."""
    from main import DEFAULTS
    from models import ModelConfig

    return ModelConfig.from_settings(DEFAULTS, **overrides)


def train_config(**overrides):
    """main.py's training settings, with `overrides` (MIN_STEPS 0 and CHECKPOINT_SECONDS 0, a
    checkpoint every epoch, unless given)."""
    from main import DEFAULTS
    from tool.train import TrainConfig

    return TrainConfig.from_settings(DEFAULTS, **{"min_steps": 0, "checkpoint_seconds": 0, **overrides})


@pytest.fixture
def repo():
    """The repository root (cwd for command-line tests)."""
    return REPO


@pytest.fixture(autouse=True)
def no_sigterm_carried_over():
    """A SIGTERM a test sends to this process is recorded (tool.errors.terminating()), and every
    atomic write after it would end as SIGTERM: no test hands that record to the next one."""
    from tool import errors

    yield
    errors._SIGTERM_SEEN.clear()


# ---------------------------------------------------------------------------------------------
# Prepared datasets: digits (built once per session, only read), tiny synthetic ones
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A data folder with digits prepared, built once per session; tests only read it."""
    root = tmp_path_factory.mktemp("data")
    prepare("digits", root, verbose=False)
    return root


def synthetic_splits(n_train_per_class=20, n_test_per_class=5, n_classes=10, shape=(1, 8, 8), seed=0):
    """{"train": (images, labels), "test": (...)}: random uint8 images, labels 0, 1, ..., 0, 1, ..."""
    generator = torch.Generator().manual_seed(seed)
    splits = {}
    for split, per_class in (("train", n_train_per_class), ("test", n_test_per_class)):
        labels = torch.arange(n_classes).repeat(per_class)
        images = torch.randint(0, 256, (len(labels), *shape), generator=generator, dtype=torch.uint8)
        splits[split] = (images, labels)
    return splits


@pytest.fixture
def make_prepared():
    """A factory: make_prepared(root, name="tiny", **synthetic_splits kwargs) writes a prepared dataset
    under root/<name>/processed/ (loadable with tool.data.datasets.load_dataset) and returns its name."""
    from tool.data.datasets import make_meta, write_processed

    def make(root, name="tiny", **kwargs):
        splits = synthetic_splits(**kwargs)
        classes = [f"class{c}" for c in range(kwargs.get("n_classes", 10))]
        write_processed(name, splits, make_meta(name, name, classes, splits, [{"synthetic": True}]), root)
        return name

    return make


def rows(images):
    """Images as a sorted list of byte strings, to compare sets of images (random ones are unique)."""
    return sorted(image.numpy().tobytes() for image in images)


def files_in(folder):
    return sorted(p.name for p in Path(folder).rglob("*")) if Path(folder).exists() else []


# ---------------------------------------------------------------------------------------------
# Running main.py in this process
# ---------------------------------------------------------------------------------------------
def run_main(data_dir, out, *args):
    """main.run with the test's data and output folders; returns the run folder. The epochs a test
    asks for (MIN_STEPS 0), and last.pt after every one of them (CHECKPOINT_SECONDS 0)."""
    return Path(main.run(["--data-dir", str(data_dir), "--output-dir", str(out), "--draw-figures", "false",
                          "--jobs", "1", "--min-steps", "0", "--checkpoint-seconds", "0", *args]))


@pytest.fixture(scope="session")
def finished_run(data_dir, tmp_path_factory):
    """A finished 1-epoch run on digits (class 0, seed 0), to copy (copy_run) and damage."""
    return run_main(data_dir, tmp_path_factory.mktemp("finished"), "--classes", "0", "--seeds", "0", "--epochs", "1")


def copy_run(run_dir, tmp_path):
    """A copy of `run_dir` as tmp_path/<its name> (the run's settings name data_dir, not itself)."""
    return Path(shutil.copytree(run_dir, Path(tmp_path) / Path(run_dir).name))


def results_of(run_dir):
    """{trial folder name: its results, with "test_scores" {score: list} and "targets" (list) from
    scores.npz} of every finished trial of `run_dir`."""
    from tool.results import read_results, read_scores

    found = {}
    for path in sorted(Path(run_dir).glob("*/results.json")):
        targets, scores = read_scores(path.parent)
        found[path.parent.name] = {**read_results(path.parent), "targets": targets.tolist(),
                                   "test_scores": {name: values.tolist() for name, values in scores.items()}}
    return found


# ---------------------------------------------------------------------------------------------
# Raw files in their real formats, and preprocess.py in this process
# ---------------------------------------------------------------------------------------------
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801  # IDX: unsigned bytes, 3 dims / 1 dim


def synthetic_arrays(n, shape, seed, n_classes=10):
    """n random uint8 images of `shape` and labels seed, seed + 1, ... (mod n_classes)."""
    images = np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)
    return images, (np.arange(n) + seed) % n_classes


def idx_bytes(array, magic):
    """An IDX file: big-endian magic, one big-endian uint32 per dimension, then the bytes."""
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_file(path, data, gz=False):
    path = path.with_name(path.name + ".gz") if gz else path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_idx_raw(root, name="mnist", n_train=30, n_test=20, gz=False, shape=(28, 28)):
    """The four IDX files of an MNIST-style dataset in root/<name>/raw/ -> {split: (images, labels)}."""
    arrays = {}
    for seed, (split, (images_file, labels_file)) in enumerate(IDX_FILES.items()):
        images, labels = synthetic_arrays(n_train if split == "train" else n_test, shape, seed)
        write_file(raw_dir(name, root) / images_file, idx_bytes(images, IMAGES_MAGIC), gz)
        write_file(raw_dir(name, root) / labels_file, idx_bytes(labels, LABELS_MAGIC), gz)
        arrays[split] = images, labels
    return arrays


def cifar_batch_bytes(data, labels, protocol):
    """One CIFAR-10 python batch. Protocol 2 names numpy's reconstructor the way the real files
    (pickled by Python 2 and numpy 1) do; protocols 4 and 5 the way numpy 2 does today."""
    batch = {"batch_label": "synthetic", "labels": [int(label) for label in labels], "data": data,
             "filenames": [f"image_{i}.png" for i in range(len(labels))]}
    raw = pickle.dumps(batch, protocol=protocol)
    return raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n") if protocol == 2 else raw


def write_cifar_raw(root, layout="flat", per_batch=4):
    """data_batch_1..5 and test_batch with (N, 3072) uint8 rows, as the home site ships them:
    in raw/ ('flat'), in raw/cifar-10-batches-py/ ('folder') or as raw/cifar-10-python.tar.gz
    ('tarball'). -> {split: (rows, labels)}."""
    raw = raw_dir("cifar10", root)
    folder = raw if layout == "flat" else raw / "cifar-10-batches-py"
    arrays, seed = {}, 0
    for split, names in CIFAR_FILES.items():
        parts = []
        for name in names:
            rows, labels = synthetic_arrays(per_batch, (3 * 32 * 32,), seed)
            write_file(folder / name, cifar_batch_bytes(rows, labels, protocol=(2, 4, 5)[seed % 3]))
            parts.append((rows, labels))
            seed += 1
        arrays[split] = tuple(np.concatenate(column) for column in zip(*parts))
    if layout == "tarball":
        with tarfile.open(raw / "cifar-10-python.tar.gz", "w:gz") as archive:
            archive.add(folder, arcname="cifar-10-batches-py")
        shutil.rmtree(folder)
    return arrays


def command(script, *args, fault=None, root=None, env=None, timeout=300):
    """`python SCRIPT ARGS` in a subprocess (cwd: the repository), under `fault` ("full-disk",
    "full-disk:GLOB" for temp files of that name pattern only, or "read-only") below `root`
    (tests/faults.py). Returns the CompletedProcess."""
    prefix = [str(REPO / "tests" / "faults.py"), fault, str(root)] if fault else []
    return subprocess.run([sys.executable, *prefix, script, *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, errors="backslashreplace", env=env or ENV, timeout=timeout)


def one_error(done, *texts):
    """The command failed as every bad input must: exit code 2, one line on stderr, 'error: ...',
    no traceback; that line holds each of `texts`. Returns it."""
    assert done.returncode == 2, f"exit code {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-4000:]
    for text in texts:
        assert text in lines[0], lines[0]
    return lines[0]


def wait_for_files(paths, timeout, process=None):
    """Until every one of `paths` is a file. Fails at the deadline, or as soon as `process` (when given) has
    ended, then with its output."""
    deadline = time.monotonic() + timeout
    while not all(path.is_file() for path in paths):
        if process is not None:
            assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"not there after {timeout} s: {[str(p) for p in paths if not p.is_file()]}"
        time.sleep(0.1)


def leftovers(folder):
    """Temp files and folders of the atomic writer or a staging step (.*.tmp) below `folder`."""
    return sorted(str(p) for p in Path(folder).rglob(".*.tmp")) if Path(folder).exists() else []


def main_fails(capsys, *argv):
    """preprocess.main in this process (so monkeypatch reaches it): exit code 2, one message; -> stderr."""
    with pytest.raises(SystemExit) as exit_info:  # any other exception would escape as a traceback
        preprocess.main(list(argv))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Own images: a folder of PNGs -> preprocess.py --dataset folder -> main.py (built once per session)
# ---------------------------------------------------------------------------------------------
NAME = "mine"
CLASSES = ("bright", "dark", "striped")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def pixels(kind, rng, size=12):
    """A small BGR image (as cv2.imwrite takes it): 'bright' (light, red-tinted), 'dark', or
    'striped' (light rows on dark)."""
    base = {"bright": (150, 200, 225), "dark": (10, 10, 10), "striped": (10, 10, 10)}[kind]
    image = np.array(base) + rng.integers(0, 30, (size, size, 3))
    if kind == "striped":
        image[::2] += 200
    return np.clip(image, 0, 255).astype(np.uint8)


def write_images(folder, kind, n, rng, size=12):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        assert cv2.imwrite(str(folder / f"{kind}_{i:02d}.png"), pixels(kind, rng, size))


@pytest.fixture(scope="session")
def own_images(tmp_path_factory):
    """DIR/train/<class>/ (16 a class) and DIR/test/<class>/ (6 a class), 12 x 12, plus one 16 x 16
    image, one corrupt .png and one text file."""
    root = tmp_path_factory.mktemp("own") / "images"
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("test", 6)):
        for kind in CLASSES:
            write_images(root / split / kind, kind, n, rng)
    assert cv2.imwrite(str(root / "train" / "bright" / "large.png"), pixels("bright", rng, size=16))
    (root / "train" / "bright" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "train" / "dark" / "notes.txt").write_text("not an image\n")
    return root


@pytest.fixture(scope="session")
def own_prepared(own_images, tmp_path_factory):
    """(data folder, what preprocess.py printed)."""
    data_dir = tmp_path_factory.mktemp("data")
    printed = io.StringIO()
    with redirect_stdout(printed):
        preprocess.main(["--dataset", "folder", "--path", str(own_images), "--name", NAME, "--data-dir", str(data_dir)])
    return data_dir, printed.getvalue()


@pytest.fixture(scope="session")
def own_trial(own_prepared, tmp_path_factory):
    """The trial folder of a 2-epoch run: 'bright' normal, 'dark' and 'striped' anomalies."""
    run_dir = main.run(["--dataset", NAME, "--data-dir", str(own_prepared[0]), "--output-dir",
                        str(tmp_path_factory.mktemp("runs")), "--epochs", "2", "--min-steps", "0", "--seeds", "0", "--classes", "bright",
                        "--protocol", "one-normal-class", "--device", "cpu"])
    return Path(run_dir) / "class0_seed0"


@pytest.fixture(scope="session")
def own_mlp_trial(own_prepared, tmp_path_factory):
    """The same trial with the MLP encoder (cascade-mlp): it has the hidden-knn scores too."""
    run_dir = main.run(["--dataset", NAME, "--data-dir", str(own_prepared[0]), "--output-dir",
                        str(tmp_path_factory.mktemp("runs")), "--model", "cascade-mlp", "--epochs", "2",
                        "--min-steps", "0", "--seeds", "0", "--classes", "bright", "--protocol", "one-normal-class",
                        "--device", "cpu", "--draw-figures", "false"])
    return Path(run_dir) / "class0_seed0"


def _broken(*args, **kwargs):
    raise RuntimeError("no ink")


@pytest.fixture(scope="session")
def digits_trial(data_dir, tmp_path_factory):
    """(trial folder, stderr) of a 1-epoch trial on digits (built-in: 1 x 8 x 8, no recorded
    preprocessing), trained while drawing its figures fails."""
    root = tmp_path_factory.mktemp("digits")
    errors = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stderr(errors):
        patch.setattr(figures, "roc_figure", _broken)
        run_dir = main.run(["--dataset", "digits", "--data-dir", str(data_dir), "--output-dir", str(root / "runs"),
                            "--epochs", "1", "--min-steps", "0", "--seeds", "0", "--classes", "0", "--protocol", "one-normal-class",
                            "--device", "cpu"])
    return Path(run_dir) / "class0_seed0", errors.getvalue()


# ---------------------------------------------------------------------------------------------
# Models and memories
# ---------------------------------------------------------------------------------------------
def latents(n, dim, seed=0, dtype=torch.float32):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def seeded_forward(module, x, seed):
    torch.manual_seed(seed)
    return module(x)


def chosen(info):
    """Per row, the set of slot indices the memory addressed."""
    return [set(row) for row in info["indices"].tolist()]


def assert_valid_weights(weights, top_k=None):
    """Finite, non-negative, each row sums to 1; with top_k, B x k (so at most k non-zero per row)."""
    assert torch.isfinite(weights).all()
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(len(weights), dtype=weights.dtype))
    if top_k is not None:
        assert weights.shape[1] == top_k
        assert ((weights > 0).sum(dim=1) <= top_k).all()
