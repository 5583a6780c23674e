"""Train and evaluate cascade-memory autoencoders; print AUROC tables.

    python main.py                                   # the embedded default: digits, every class, 3 seeds
    python main.py configs/fmnist-cascade.py         # one row of the results: only what differs from below
    python main.py --dataset fmnist --classes 0 3 --seeds 0 --model ae
    python main.py --resume RUN_DIR                  # finish an interrupted sweep (RUN_DIR: runs/<dataset>/<model>/<time>)
    python main.py --eval-only RUN_DIR               # score its checkpoints again
    python main.py --table RUN_DIR                   # print its table from its results.json files
    python main.py --compare results/fmnist          # every run of a dataset in one table
    python main.py --export RUN_DIR                  # its results, no checkpoints, into results/
    python main.py --figures RUN_DIR                 # draw its figures again
    python main.py --leakage RUN_DIR                 # how much each class mixes with the others

Edit the constants below to reproduce a table, give a file of the constants that differ
(configs/), or override any of them on the command line (EPOCHS -> --epochs, TOP_K -> --top-k 15 5).
Every run lands in its own new folder under OUTPUT_DIR; nothing is ever overwritten. Below the
constants, `run_trial` is the experiment: one class as the anomaly, one seed, from the split to
the metrics; tool/commands.py holds the command line.
"""
# ------------------------------------------------------------------------------------------------
# Settings: the paper's by default (docs/method.md). Each can be overridden on the command line.
# ------------------------------------------------------------------------------------------------
DATASET = "digits"  # mnist | fmnist | kmnist | cifar10 | digits (embedded, no download) | a folder dataset
PROTOCOL = "one-anomalous-class"  # the paper's: one class anomalous, the rest normal; or one-normal-class (Deep SVDD / MemAE)
CLASSES = None  # classes to run, by index or name; None = every class of the dataset
SEEDS = [0, 1, 2]  # fixed seeds, one trial per (class, seed); tables give mean ± std over them
MODEL = "cascade"  # preset: cascade | cascade-mlp | cascade-released | memae | ae | ae-mlp | vae (models/__init__.py), or a classical detector: knn | iforest | ocsvm (tool/classical.py)
# cascade memory, one value per stage (paper: prior memory 50 slots, k = 15, forget rate 0.1; posterior
# memory 1000 slots, k = 5, forget rate 0.5). Fewer values = fewer stages; none = a plain autoencoder.
N_SLOTS = [50, 1000]  # slots per stage (N_H, N_C)
TOP_K = [15, 5]  # slots each latent vector is re-written from (k)
FORGET_RATE = [0.1, 0.5]  # share of slots forgotten per training pass (nu); 0 = no forgetting
ADDRESSING_THRESHOLD = 0.0  # memory addressing: kept cosine similarities at or below it get weight 0 (released code: ReLU, i.e. 0)
CONNECTOR = "leaky_relu"  # activation after BatchNorm1d behind each stage: leaky_relu (released code) | relu (paper figure)
LATENT_DIM = 128  # D, width of the latent vector and of every slot (released code: 128)
CHANNELS = [32, 64, 128]  # conv backbone: channels of the strided convolutions (as many as the image size allows)
MEMAE_SLOTS = 100  # MemAE baseline: memory size N (MemAE paper, image experiments)
MEMAE_SHRINK_THRESHOLD = None  # MemAE hard-shrinkage lambda; None = 1 / MEMAE_SLOTS
MEMAE_ENTROPY_WEIGHT = 0.0002  # MemAE entropy loss weight (MemAE paper)
KL_WEIGHT = 1.0  # VAE baseline: weight of the KL term (per pixel, like the MSE)
EPOCHS = 100  # most epochs per trial (the paper's count is not public; early stopping ends most runs sooner)...
MIN_STEPS = 2000  # ...unless they make fewer optimiser steps than this (digits: 4 batches an epoch, so 500 epochs; an epoch of fewer batches counts as 4)
PATIENCE = 10  # early stopping: epochs without a lower validation loss (released code: 10)...
PATIENCE_STEPS = 1000  # ...and at least this many optimiser steps without one (digits has 4 batches an epoch; chosen on digits-tune, results/tuning.md)
BATCH_SIZE = 256  # images per optimiser step (released code: 256)
LR = 1e-3  # Adam learning rate (released code: 1e-3)
WEIGHT_DECAY = 0.0  # Adam weight decay (released code: none)
PRECISION = "fp32"  # fp32 | bf16: bfloat16 autocast for training, faster on a CPU with AVX-512 bf16 and on GPUs (README, Speed)
CHECKPOINT_SECONDS = 60  # last.pt after the first epoch, then at most every this many seconds (0: every epoch)
COMPILE = False  # torch.compile the encoder and decoder for training (on a CPU it costs more than it saves; see README, Speed)
VAL_FRACTION = 0.1  # share of the normal training images held out for validation (paper: 10%)
THRESHOLD_PERCENTILE = 95.0  # decision threshold = this percentile of the validation scores (for F1 @ val.)
SSL = None  # a self-supervised task on the encoder's code (models/ssl.py): None (the paper's model) | transforms (rotation prediction) | transforms-flips (rotations of the image and of its mirror image) | contrastive (CSI)
SSL_WEIGHT = 1.0  # weight of the task's loss beside the reconstruction MSE
SSL_TEMPERATURE = 0.5  # NT-Xent temperature of the contrastive task (CSI: 0.5)
SSL_AUGMENT = False  # the transformation tasks' copies of a training image are made from a random view of it (scale, shift), so the head cannot learn the training images' own cues; the decoder still sees the image itself
SSL_IN_VALIDATION = True  # the task's loss counts in the validation loss that picks the best epoch and stops early; False: the model's loss without it
SCORE = "best"  # the score tables and figures show (tool/scores.py): best = the network's best (fused-lof conv, fused-hidden MLP, fused-ssl with SSL), recon = the paper's, or any other; --compare: all = a row per score
DEVICE = "auto"  # auto = CUDA, then Apple MPS, then CPU; or cpu, cuda, cuda:1, mps
JOBS = 0  # trials run at once; 0 = auto: one per CPU core / THREADS on a CPU, one per GPU on GPUs
THREADS = 1  # torch CPU threads per trial; 1 keeps scores independent of JOBS and of the core count; 0 = torch default
DRAW_FIGURES = True  # ROC, score histogram, reconstructions, slot usage beside every trial and run (tool/report/figures.py)
OUTPUT_DIR = "runs"  # runs land in OUTPUT_DIR/<dataset>/<model>/<timestamp>/ (relative = beside this file)
DATA_DIR = None  # datasets folder; None = datasets/ beside this file

DEFAULTS = {name.lower(): value for name, value in dict(globals()).items() if name.isupper()}  # the constants above

import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from models import ModelConfig, build_model, count_parameters  # noqa: E402
from tool.classical import CLASSICAL, ClassicalScorer  # noqa: E402
from tool.commands import command_line  # noqa: E402
from tool.data.protocol import make_split  # noqa: E402
from tool.errors import cli  # noqa: E402
from tool.evaluation import evaluate  # noqa: E402
from tool.report import figures  # noqa: E402
from tool.results import write_results  # noqa: E402
from tool.runs import write_trial_config  # noqa: E402
from tool.checkpoints import write_checkpoint, write_scoring  # noqa: E402
from tool.scores import Scorer  # noqa: E402
from tool.seeding import seed_everything  # noqa: E402
from tool.train import train  # noqa: E402


# ------------------------------------------------------------------------------------------------
# The experiment: one trial = one class as the anomaly (or as the normal class), one seed
# ------------------------------------------------------------------------------------------------
def run_trial(config, ds, target_class, seed, folder, device, log=print):
    """Train and evaluate one trial into `folder` (class<c>_seed<s>/ of a run); return its results."""
    started = time.perf_counter()
    seed_everything(seed)
    split = make_split(ds, config["protocol"], target_class, config["val_fraction"], seed)  # normal train and
    log(split.describe())                                                     # validation images; the test split
    if config["model"] in CLASSICAL:  # kNN, Isolation Forest, One-Class SVM, fitted on the normal training images
        model, about, trained = None, {"detector": CLASSICAL[config["model"]]}, {"epochs_trained": 0, "history": {}}
        write_trial_config(folder, config, ds, target_class, seed, device, about)
        scorer = ClassicalScorer.fit(config["model"], split.train, split.val, seed, config["threshold_percentile"])
    else:  # a network of models/, trained on the normal training images, stopped early on the validation images
        model = build_model(config["model"], ds.shape, ModelConfig.from_settings(config)).to(device)
        about = {"n_parameters": count_parameters(model)}
        write_trial_config(folder, config, ds, target_class, seed, device, about)
        trained = train(config, model, split, seed, folder, log)
        write_checkpoint(folder, model, config["model"], ds.shape, trained["best_epoch"])
        scorer = Scorer.fit(model, split.train, split.val, seed, config["threshold_percentile"])
        write_scoring(folder, scorer)  # bank.pt: what the neighbour scores of new images compare with
    test_scores = scorer.scores(split.test)  # every score of every test image
    results = {**evaluate(test_scores, split.test_targets, scorer), **trained, **about, "class": target_class,
               "class_name": ds.classes[target_class], "seed": seed, "counts": split.counts, "device": device,
               **{key: config[key] for key in ("dataset", "protocol", "model")},
               "total_seconds": round(time.perf_counter() - started, 3)}
    write_results(folder, results, split.test_targets, test_scores)  # results.json last: the trial is finished
    if config["draw_figures"]:  # ROC, score histogram, reconstructions, slot usage (tool/report/figures.py)
        figures.draw_trial(folder, results, config["score"], split, model)
    return results


def run(argv=None):
    """Everything main.py does: a sweep of trials, or an action on a run folder (tool/commands.py)."""
    return command_line(argv, DEFAULTS, run_trial, __doc__, Path(__file__))


main = cli(run)

if __name__ == "__main__":
    main(sys.argv[1:])
