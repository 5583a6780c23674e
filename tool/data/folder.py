"""Folder datasets: your own images, one sub-folder per class, in the processed format.

    python preprocess.py --dataset folder --path DIR --name NAME [--size H W] [--grayscale]
                         [--test-fraction 0.2] [--seed 0]

Two layouts are understood:

    DIR/<class>/*.png|jpg|jpeg|bmp                  each class split here: a seeded, stratified
                                                    --test-fraction of its images becomes test
    DIR/train/<class>/..., DIR/test/<class>/...     the folder's own split, used as it is (a class
                                                    may be absent from train/, as in MVTec AD,
                                                    where train/ holds the normal class only)

Classes are the sub-folder names in sorted order: main.py's --classes takes a name or its index
in that order. Images are decoded with OpenCV from their bytes (so any file name works), as RGB
or, with --grayscale, as one channel, and resized to one size with area interpolation: --size H
W, or by default the most common size of the training images (on a tie, the first found in sorted
file order; the test images never choose anything). meta.json records this
preprocessing ("preprocessing": size, channels, grayscale, interpolation) so that score.py
repeats it exactly, and every image's file in tensor order ("files"), so that a score in
results.json can be traced back to its image. Files that are not PNG, JPEG or BMP, or that
OpenCV cannot read, are listed and skipped.
"""
import os
import stat
from collections import Counter
from pathlib import Path

import cv2  # noqa: E402

cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # an unreadable file: reported here, in one line
import numpy as np
import torch
from prettytable import PrettyTable

from tool.data.datasets import (DATASETS, NAME_PATTERN, is_prepared, make_meta, processed_dir, stratified_mask,
                           write_processed)
from tool.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
READ_MODES = {  # how cv2.imdecode decodes a file; every mode gives 8-bit pixels
    "rgb": cv2.IMREAD_COLOR,  # 3 channels (grey files repeated, alpha dropped), then BGR -> RGB
    "grayscale": cv2.IMREAD_GRAYSCALE,  # 1 channel
    "as-stored": cv2.IMREAD_ANYCOLOR,  # 1 or 3 channels, as the file holds them (built-in datasets' models)
}
INTERPOLATIONS = {"area": cv2.INTER_AREA}  # name recorded in meta.json -> OpenCV flag
INTERPOLATION = "area"  # averages pixels when shrinking (no aliasing), bilinear-like when enlarging
MAX_IMAGE_BYTES = 256 * 2 ** 20  # a larger file is not read (a forged or sparse file of gigabytes)
MAX_IMAGE_PIXELS = 2 ** 27  # an image of more pixels is not decoded (a small PNG can claim 60000 x 60000)
TEST_FRACTION = 0.2  # share of each class held out as test when the folder has no train/ and test/
SEED = 0  # numpy seed of that split


# ---------------------------------------------------------------------------------------------
# One image
# ---------------------------------------------------------------------------------------------
def read_image(path, mode):
    """uint8 pixels (H, W, C) of an image file read in `mode` (READ_MODES); None when unreadable.

    The file's bytes are read by Python and decoded by OpenCV from memory: OpenCV never sees the
    file's name, so any name works (cv2.imread crashes the process on a name that is not UTF-8).
    Only a regular file of at most MAX_IMAGE_BYTES is read, and only an image whose header claims at
    most MAX_IMAGE_PIXELS is decoded (OpenCV's own limit is not applied by imdecode)."""
    return _read_image(path, mode)[0]


def image_problem(path, mode):
    """Why the file cannot be read as an image, in words, or None when it can."""
    return _read_image(path, mode)[1]


def _read_image(path, mode):
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return None, "not a regular file (a folder, device, FIFO or socket)"
        if info.st_size > MAX_IMAGE_BYTES:
            return None, f"{info.st_size / 2 ** 20:.0f} MB, more than an image file may be ({MAX_IMAGE_BYTES >> 20} MB)"
        data = np.frombuffer(Path(path).read_bytes(), dtype=np.uint8)
    except OSError as error:
        return None, f"cannot be read ({error.strerror or type(error).__name__})"
    if data.size == 0:
        return None, "empty"
    size = header_size(data.tobytes()[:65536])
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        return None, f"{size[1]} x {size[0]} pixels, more than an image may have ({MAX_IMAGE_PIXELS:,})"
    try:
        image = cv2.imdecode(data, READ_MODES[mode])
    except cv2.error:
        image = None
    if image is None:
        return None, "corrupt, too large, or not a PNG, JPEG or BMP image"
    return (image[:, :, None] if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)), None


def header_size(head):
    """(width, height) that a PNG, BMP or JPEG file's header claims, from its first bytes; None
    when they name no such image (OpenCV then refuses it, or it is another format)."""
    import struct

    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head[:2] == b"BM" and len(head) >= 26:
        width, height = struct.unpack("<ii", head[18:26])
        return abs(width), abs(height)
    if head[:2] == b"\xff\xd8":  # JPEG: the first start-of-frame segment holds the size
        i = 2
        while i + 9 < len(head):
            if head[i] != 0xFF:
                i += 1
                continue
            marker = head[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                i += 1 if marker == 0xFF else 2
                continue
            length = struct.unpack(">H", head[i + 2:i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", head[i + 5:i + 9])
                return width, height
            i += 2 + length
    return None


def shown(path):
    """A path as text that can always be printed: bytes of a name that are not UTF-8 as \\xNN."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def to_chw(image, size, interpolation=INTERPOLATION):
    """uint8 (H, W, C) -> uint8 (C, *size), resized when its size differs."""
    height, width = size
    if image.shape[:2] != (height, width):
        # cv2.resize drops a single channel's axis: reshape restores it
        image = cv2.resize(image, (width, height), interpolation=INTERPOLATIONS[interpolation])
        image = image.reshape(height, width, -1)
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def list_images(folder, skipped):
    """PNG, JPEG and BMP files under `folder` (recursively, sorted; links to folders inside it are
    not followed); other files, and sub-folders that cannot be listed, are appended to `skipped`
    as (path, reason)."""
    images = []
    for top, folders, files in os.walk(folder, onerror=lambda error: skipped.append(
            (Path(error.filename or folder), f"cannot be listed ({error.strerror or type(error).__name__})"))):
        folders.sort()
        for name in sorted(files):
            path = Path(top) / name
            if path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(path)
            else:
                skipped.append((path, "not a PNG, JPEG or BMP file"))
    return sorted(images)


# ---------------------------------------------------------------------------------------------
# A folder of classes
# ---------------------------------------------------------------------------------------------
def check_name(name):
    """A dataset name for a folder: a plain folder name that no built-in dataset uses."""
    if not name or not NAME_PATTERN.fullmatch(name):
        raise UserError(f"--name '{name}' is not a plain folder name (letters, digits, '.', '_', '-'; at most 100 characters).")
    if name == "folder" or name in DATASETS or name.removesuffix("-tune") in DATASETS:
        raise UserError(f"--name '{name}' is taken by a built-in dataset ({', '.join(DATASETS)}, their -tune "
                        f"splits, and 'folder'); choose another name.")
    return name


def _subfolders(folder):
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def _layout(source):
    """{split: {class name: class folder}}; split None when the folder has no train/ and test/."""
    top = _subfolders(source)
    if "train" in top and "test" in top:
        return {split: _subfolders(top[split]) for split in ("train", "test")}
    if "train" in top or "test" in top:
        one, other = ("train", "test") if "train" in top else ("test", "train")
        raise UserError(f"{source} has a {one}/ folder but no {other}/ folder: give both "
                        f"({source}/train/<class>/, {source}/test/<class>/) or neither ({source}/<class>/).")
    return {None: top}


def _read_class(folder, mode, skipped):
    """(images, files) of one class folder; unreadable and non-image files go to `skipped`."""
    images, files = [], []
    for path in list_images(folder, skipped):
        image = read_image(path, mode)
        if image is None:
            skipped.append((path, "unreadable: corrupt or not an image"))
        else:
            images.append(image)
            files.append(path)
    if not images:
        raise UserError(f"class folder {folder} holds no readable PNG, JPEG or BMP image; add images or "
                        f"remove the folder.")
    return images, files


def prepare_folder(path=None, name=None, root=None, size=None, grayscale=False, test_fraction=None, seed=None,
                   force=False, verbose=True):
    """Prepare the images under `path` as dataset `name`; returns 'prepared' or 'already prepared'.

    test_fraction and seed (default TEST_FRACTION, SEED) split a folder without train/ and test/.
    Raises UserError (before anything is written) on a missing folder, fewer than two classes, a
    class without readable images, a name a built-in dataset uses, or a setting that does not apply.
    """
    if path is None or name is None:
        raise UserError("--dataset folder needs --path DIR (one sub-folder per class) and --name NAME.")
    check_name(name)
    source = Path(path)
    if not source.is_dir():
        raise UserError(f"--path {source}: no such folder.")
    if size is not None and min(size) < 1:
        raise UserError(f"--size must be two positive integers H W, got {list(size)}")
    layout = _layout(source)
    if None not in layout and (test_fraction is not None or seed is not None):
        raise UserError(f"{source} has its own train/ and test/ folders: --test-fraction and --seed do not apply.")
    test_fraction = TEST_FRACTION if test_fraction is None else test_fraction
    seed = SEED if seed is None else seed
    if not 0 < test_fraction < 1:
        raise UserError(f"--test-fraction must lie in (0, 1), got {test_fraction}")
    if seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {seed}")
    if is_prepared(name, root) and not force:
        return "already prepared (--force prepares it again)"

    classes = sorted({c for folders in layout.values() for c in folders})
    if len(classes) < 2:
        where = " and ".join(f"{source / split}/" for split in layout if split) or f"{source}/"
        raise UserError(f"{where} must hold at least two class sub-folders, found {classes or 'none'}.")
    mode = "grayscale" if grayscale else "rgb"
    skipped = []
    read = {split: {classes.index(c): _read_class(folder, mode, skipped) for c, folder in folders.items()}
            for split, folders in layout.items()}

    # entries (label, image, file) per split, in class order, files sorted within a class
    entries = {"train": [], "test": []}
    rng = np.random.default_rng(seed)
    for split, per_class in read.items():
        for label, (images, files) in sorted(per_class.items()):
            test = (np.full(len(images), split == "test") if split else
                    stratified_mask(np.zeros(len(images)), 1, test_fraction, rng))
            for image, file, is_test in zip(images, files, test):
                entries["test" if is_test else "train"].append((label, image, file))
    for split, items in entries.items():
        if not items:
            hint = " or a larger --test-fraction" if split == "test" and None in layout else ""
            raise UserError(f"{source}: the {split} split would be empty; it needs more images{hint}.")

    chosen = size is None
    train_sizes = Counter(image.shape[:2] for _, image, _ in entries["train"])
    size = train_sizes.most_common(1)[0][0] if chosen else tuple(size)  # chosen on the training images only
    sizes = Counter(image.shape[:2] for items in entries.values() for _, image, _ in items)
    _check_memory(sum(len(items) for items in entries.values()), 1 if grayscale else 3, size)
    splits = {split: (torch.from_numpy(np.stack([to_chw(image, size) for _, image, _ in items])),
                      torch.tensor([label for label, _, _ in items], dtype=torch.int64))
              for split, items in entries.items()}
    layout_text = ("the folder's own train/ and test/ sub-folders" if None not in layout else
                   f"one sub-folder per class; a stratified {test_fraction:g} of each class is test "
                   f"(numpy seed {seed})")
    meta = make_meta(
        name, f"images from {source.resolve()}", classes, splits,
        [{"folder": str(source.resolve()), "layout": layout_text}],
        preprocessing={"size": list(size), "channels": 1 if grayscale else 3, "grayscale": grayscale,
                       "color_order": "grayscale" if grayscale else "RGB", "interpolation": INTERPOLATION,
                       "reader": f"cv2.imdecode (OpenCV {cv2.__version__})"},
        files={split: [file.relative_to(source).as_posix() for _, _, file in items]
               for split, items in entries.items()},
        skipped=[{"file": p.relative_to(source).as_posix(), "reason": why} for p, why in skipped])
    write_processed(name, splits, meta, root)
    if verbose:
        _report(name, source, classes, splits, sizes, size, skipped, root)
        if chosen and max(size) > 128:
            print(f"note: {size[0]} x {size[1]} images make a large model and slow training; smaller ones "
                  f"(e.g. --size 64 64 --force) are usually enough for anomaly detection.")
    return "prepared"


MEMORY_SHARE = 0.5  # the prepared tensors (and their copy while saved) must fit in this share of the memory


def _check_memory(n_images, channels, size):
    """Refuse, before anything is allocated, a dataset whose uint8 tensors (written as a copy too)
    would not fit in MEMORY_SHARE of this machine's memory."""
    from tool.settings import machine_memory

    needed, memory = 2 * n_images * channels * size[0] * size[1], machine_memory()
    if memory and needed > MEMORY_SHARE * memory:
        raise UserError(f"{n_images} images of {channels} x {size[0]} x {size[1]} need {needed / 2**30:.1f} GiB to "
                        f"prepare, more than this machine's memory allows ({memory / 2**30:.1f} GiB): choose a "
                        f"smaller --size.")


def _report(name, source, classes, splits, sizes, size, skipped, root):
    """What was read, what was skipped, the counts per class and split, and where it went."""
    if skipped:
        print(f"skipped {len(skipped)} file(s):")
        for path, why in skipped:
            print(f"  {shown(path.relative_to(source).as_posix())}: {why}")
    resized = sum(n for s, n in sizes.items() if s != size)
    print(f"size {size[0]} x {size[1]}; {resized} of {sum(sizes.values())} image(s) resized "
          f"({INTERPOLATION} interpolation)")
    table = PrettyTable(["index", "class", *splits], align="r")
    table.align["class"] = "l"
    for c, class_name in enumerate(classes):
        table.add_row([c, class_name, *(int((labels == c).sum()) for _, labels in splits.values())])
    print(table)
    for split, (images, _) in splits.items():
        print(f"{name} {split} {tuple(images.shape)} {str(images.dtype).removeprefix('torch.')}")
    print(f"written to {processed_dir(name, root)}")
    numeric = [f"'{c}' is index {i}" for i, c in enumerate(classes) if c.lstrip("-").isdigit() and c != str(i)]
    if numeric:
        print(f"note: main.py --classes reads a number as an index, and {', '.join(numeric)}: give classes "
              f"by index, or rename the folders (e.g. 'class{classes[0]}') to give them by name.")
