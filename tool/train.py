"""Training: Adam, early stopping on the validation loss (normal data only), best model restored.

The loop is lean on purpose: the images live on the device as one float tensor and batches are
taken by index (no per-sample DataLoader), losses are accumulated on the device and read once per
epoch (no host synchronisation per batch), and validation runs in large batches under
torch.inference_mode(). Every epoch ends with a checkpoint (model, optimiser, early-stopping
state, RNG states) written atomically, so an interrupted run resumes exactly where it stopped.

The test split never reaches this module: `train_model` takes the training and validation images
and nothing else.
"""
import hashlib
import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tool.errors import UserError
from models.memory import addressing_entropy
from tool.data.datasets import scale_images
from tool.evaluation import batches
from tool.io import atomic_torch_save, load_checkpoint
from tool.seeding import rng_state, set_rng_state
from tool.speed import autocast, compile_errors, compile_model, uncompile_model, uses_channels_last


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainConfig:
    """The training settings, named as main.py's constants (EPOCHS -> epochs, ...), which hold
    their defaults and say what each one is."""
    epochs: int  # most epochs...
    min_steps: int  # ...unless fewer than this many optimiser steps: then enough epochs to make them
    patience: int  # epochs without a better validation loss before stopping...
    patience_steps: int  # ...and at least this many optimiser steps without one
    batch_size: int
    lr: float
    weight_decay: float
    precision: str  # "fp32", or "bf16": bfloat16 autocast for the training and validation passes
    compile: bool  # torch.compile the encoder and decoder for training
    checkpoint_seconds: float  # last.pt after epoch 1, then after each epoch ending this long after the last one
    ssl_in_validation: bool  # the self-supervised task's loss counts in the validation loss (best epoch, stopping)

    @classmethod
    def from_settings(cls, settings, **overrides):
        """The training settings out of a mapping of every setting (main.DEFAULTS, a run's config)."""
        return cls(**{f.name: overrides.get(f.name, settings[f.name]) for f in fields(cls)})


@dataclass
class TrainResult:
    epochs_trained: int
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    seconds: float
    history: list = field(default_factory=list)


@torch.inference_mode()
def validation_pass(model, images, batch_size=None, with_task=True):
    """Mean loss of `model` (eval mode) over `images` (with_task=False: without the self-supervised
    task's term), and per memory stage what these (normal) images address: "hits", how many of
    them give each slot a weight > 0, and "entropy", their mean addressing entropy."""
    model.eval()
    total, count, stats = None, 0, []
    for xb in batches(images, batch_size):
        out = model(xb)
        loss = out["loss"] if with_task or "ssl" not in out else out["loss"] - out["ssl"]["loss"]
        total = loss * len(xb) if total is None else total + loss * len(xb)
        count += len(xb)
        for i, info in enumerate(out["memory"]):
            if len(stats) <= i:
                stats.append({"hits": torch.zeros(info["n_slots"], device=xb.device), "entropy": 0.0})
            w = info["weights"]
            stats[i]["hits"].index_put_((info["indices"].reshape(-1),), (w > 0).reshape(-1).float(), accumulate=True)
            stats[i]["entropy"] = stats[i]["entropy"] + addressing_entropy(w).sum()
    return float(total) / count, [{"hits": s["hits"], "entropy": float(s["entropy"]) / count} for s in stats]


def make_optimizer(model, config, device):
    """Adam; its fused implementation where PyTorch has one (CPU, CUDA): 6-8% faster steps."""
    fused = True if torch.device(device).type in ("cpu", "cuda") else None
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def train_epoch(model, optimizer, images, order, batch_size, precision="fp32"):
    """One pass over `images` (on the device) in the batches `order` (a device index tensor) cuts,
    the forward pass (and the loss) in `precision`; backward and the optimiser step outside
    autocast, as PyTorch requires (under it, bf16 training diverged: loss 2.3 against 0.85 after
    one Fashion-MNIST epoch of 5,120 images).

    Returns the summed per-sample training loss as a device tensor: no host synchronisation here.
    (benchmarks/throughput.py times this very function.)
    """
    loss_sum = torch.zeros((), device=images.device)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        if len(idx) < 2:  # BatchNorm cannot train on a batch of one
            continue
        with autocast(precision, images.device):
            out = model(images.index_select(0, idx))
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        loss_sum += out["loss"].detach() * len(idx)
    return loss_sum


def train(config, model, split, seed, folder, bar=True):
    """Train `model` on the split's normal training images; early stopping and the best weights
    come from its normal validation images (the test images never reach training). A line per
    epoch goes to folder/train.log, the losses and memory use to tensorboard (folder/tb/), and an
    interrupted trial resumes from folder/last.pt. Returns what results.json keeps of it."""
    from tensorboardX import SummaryWriter

    from tool.runs import PLACEMENT_KEYS
    folder = Path(folder)
    device = next(model.parameters()).device
    resumed = (folder / "last.pt").exists()  # resuming, train_model logs the checkpoint's epochs again:
    with SummaryWriter(str(folder / "tb"), purge_step=1 if resumed else None) as writer, \
            open(folder / "train.log", "a", encoding="utf-8") as log:  # purge_step hides what killed processes logged
        result = train_model(model, scale_images(split.train, device), scale_images(split.val, device),
                             TrainConfig.from_settings(config), folder / "last.pt", seed, writer,
                             desc=f"class {split.target_class} seed {seed}", log=lambda line: print(line, file=log,
                                                                                                  flush=True),
                             bar=bar, trial={"class": split.target_class, "settings": {
                                 k: v for k, v in config.items() if k not in PLACEMENT_KEYS}})
    return {"epochs_trained": result.epochs_trained, "best_epoch": result.best_epoch,
            "best_val_loss": result.best_val_loss, "stopped_early": result.stopped_early,
            "train_seconds": round(result.seconds, 3), "history": result.history}


def train_model(model, train_images, val_images, config, checkpoint_path, generator_seed, writer=None,
                desc="train", log=None, channels_last=None, on_epoch=None, bar=True, trial=None):
    """Train `model` on `train_images` (float, on the model's device), stop early on `val_images`.

    Resumes from `checkpoint_path` when it exists. Returns a TrainResult; the model ends holding
    its best weights (lowest validation loss), in eval mode and the usual memory layout. log(line),
    when given, takes a line per epoch; bar: a progress bar over the epochs where the output is a
    terminal. channels_last: None = uses_channels_last.
    on_epoch(epoch, model), when given, is called after each epoch's validation pass with the
    model in eval mode (diagnostics, e.g. scripts/epoch_oracle.py; it must not draw random numbers).
    trial: what else last.pt must have been written for to be resumed (the class, the model's settings).
    """
    device = train_images.device
    key = _trial_key(config, generator_seed, train_images, trial)
    channels_last = uses_channels_last(model, device) if channels_last is None else channels_last
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config, device)
    if config.compile:
        compile_model(model)
    shuffle = torch.Generator().manual_seed(generator_seed)  # batch order, saved with the checkpoint
    state = {"epoch": 0, "best_val": float("inf"), "best_epoch": 0, "bad_epochs": 0, "bad_steps": 0, "history": [],
             "best_model": None, "seconds": 0.0}
    if checkpoint_path.exists():
        ckpt = load_checkpoint(checkpoint_path, device, "Delete it to train this trial from its start.")
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            shuffle.set_state(ckpt["shuffle"])
            set_rng_state(ckpt["rng"])
            state = ckpt["state"]
            if not _sound_state(state, max(config.epochs, config.min_steps), model):
                raise ValueError("its training state is garbled")
            if writer is not None:  # a killed process's logs may lack its last epochs: log them all again
                for entry in state["history"]:
                    _log_epoch(writer, entry, optimizer.param_groups[0]["lr"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as error:
            raise UserError(f"{checkpoint_path} does not fit this model and settings "
                            f"({type(error).__name__}). Delete it to train this trial from its start.") from None
        written_for = ckpt.get("trial")  # absent in the checkpoints of older code
        if written_for is not None and written_for != key:
            differ = sorted(k for k in {**written_for, **key} if written_for.get(k) != key.get(k)) \
                if isinstance(written_for, dict) else ["all"]
            raise UserError(f"{checkpoint_path} was written by a trial of other settings, images or seed (differ: "
                            f"{', '.join(differ)}): copied from another trial, its config.json edited, or the "
                            f"dataset prepared again. Delete it to train this trial from its start.")

    n = len(train_images)
    steps_per_epoch = batches_per_epoch(n, config.batch_size)
    epochs = max(config.epochs, step_rule_epochs(config.min_steps, steps_per_epoch))  # MIN_STEPS: small datasets
    bar = tqdm(total=epochs, initial=state["epoch"], desc=desc, unit="epoch", leave=False, dynamic_ncols=True,
               disable=None if bar else True)  # disable=None: no bar when the output is not a terminal (log files)
    stopped_early = False
    saved = (state["epoch"], time.monotonic())  # the epoch last.pt holds, and when it was written
    while state["epoch"] < epochs:
        if _patience_spent(state, config):
            stopped_early = True
            break
        epoch = state["epoch"] + 1
        started = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=shuffle).to(device)
        with compile_errors(config.compile):
            loss_sum = train_epoch(model, optimizer, train_images, order, config.batch_size, config.precision)
        train_loss = float(loss_sum) / n  # the one host synchronisation of the epoch
        if not np.isfinite(train_loss):
            raise TrainingDiverged(f"{desc}: the training loss became {train_loss} in epoch {epoch}. "
                                   f"{_kept(saved[0], checkpoint_path)} Try a lower learning rate (--lr), or smaller "
                                   f"loss weights (--kl-weight, --memae-entropy-weight).")
        with autocast(config.precision, device):
            val_loss, usage = validation_pass(model, val_images, with_task=config.ssl_in_validation)
        memory = [{"slots_used": float((u["hits"] > 0).float().mean()), "entropy": u["entropy"]} for u in usage]
        if on_epoch is not None:
            on_epoch(epoch, model)
        if not np.isfinite(val_loss):
            raise TrainingDiverged(f"{desc}: the validation loss became {val_loss} in epoch {epoch}. "
                                   f"{_kept(saved[0], checkpoint_path)}")
        improved = val_loss < state["best_val"]
        if improved:
            state.update(best_val=val_loss, best_epoch=epoch, bad_epochs=0, bad_steps=0,
                         best_model={k: v.detach().clone() for k, v in model.state_dict().items()})
        else:
            state["bad_epochs"] += 1
            state["bad_steps"] = state.get("bad_steps", 0) + max(steps_per_epoch, STEP_RULE_BATCHES)
        seconds = time.perf_counter() - started
        state["seconds"] += seconds
        state["epoch"] = epoch
        state["history"].append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                                 "memory": memory, "seconds": seconds})
        if writer is not None:
            _log_epoch(writer, state["history"][-1], optimizer.param_groups[0]["lr"])
            writer.flush()  # what tensorboardX's thread has written so far; a resume logs every epoch again
        if epoch == 1 or time.monotonic() - saved[1] >= config.checkpoint_seconds:  # small epochs: not every one
            atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "shuffle": shuffle.get_state(), "rng": rng_state(), "state": state,
                               "trial": key}, checkpoint_path)
            saved = (epoch, time.monotonic())
        bar.update(1)
        bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}", best=state["best_epoch"])
        if log is not None:
            log(epoch_line(desc, state["history"][-1], improved))
    bar.close()
    if config.compile:
        uncompile_model(model)
    if state["best_model"] is not None:
        model.load_state_dict(state["best_model"])
    model.to(memory_format=torch.contiguous_format).eval()
    return TrainResult(state["epoch"], state["best_epoch"], state["best_val"],
                       stopped_early or _patience_spent(state, config), state["seconds"], state["history"])


def epoch_line(desc, entry, improved):
    """One epoch in words: the losses, '*' where the validation loss is the lowest so far, the
    time, and per memory stage the share of its slots the validation images used and their mean
    addressing entropy (ln k when the k chosen slots get equal weights, 0 when one gets all)."""
    usage = "".join(f"  memory stage {i + 1}: {m['slots_used']:.0%} of slots used, entropy {m['entropy']:.2f}"
                    for i, m in enumerate(entry["memory"]))
    return (f"{desc} epoch {entry['epoch']:3d}  train loss {entry['train_loss']:.5f}  validation loss "
            f"{entry['val_loss']:.5f}{' *' if improved else '  '}  {entry['seconds']:5.1f} s{usage}")


def _log_epoch(writer, entry, lr):
    """An epoch of the history to tensorboard: its losses, the learning rate, each stage's memory use."""
    writer.add_scalar("loss/train", entry["train_loss"], entry["epoch"])
    writer.add_scalar("loss/validation", entry["val_loss"], entry["epoch"])
    writer.add_scalar("lr", lr, entry["epoch"])
    for i, stage in enumerate(entry["memory"]):
        writer.add_scalar(f"memory/stage{i + 1}/slots_used", stage["slots_used"], entry["epoch"])
        writer.add_scalar(f"memory/stage{i + 1}/entropy", stage["entropy"], entry["epoch"])


def _kept(saved_epoch, checkpoint_path):
    if saved_epoch == 0:
        return "No epoch finished, so no checkpoint was kept."
    return f"The last good checkpoint (epoch {saved_epoch}) is kept in {checkpoint_path}."


def _trial_key(config, seed, train_images, trial=None):
    """What last.pt must have been written for to be resumed: the seed, the settings of the steps, the
    training images (their sha256: another class, or a dataset prepared again, are other images) and
    `trial`, in the form JSON gives back (a tuple and a list of the same numbers are equal)."""
    images = hashlib.sha256(train_images.detach().cpu().contiguous().view(torch.uint8).numpy()).hexdigest()
    return json.loads(json.dumps({"seed": seed, "lr": config.lr, "weight_decay": config.weight_decay,
                                  "batch_size": config.batch_size, "precision": config.precision,
                                  "images": images, **(trial or {})}))


def _sound_state(state, epochs_at_most, model):
    """A checkpoint's training state as train_model writes it, every field (a forged epoch of 10**12,
    or a NaN best validation loss, would end up in results.json or freeze the best weights; best
    weights of another model would fail only at the end of the training)."""
    epoch, history, best = state["epoch"], state["history"], state["best_model"]
    counts = all(type(state[key]) is int and state[key] >= 0 for key in ("bad_epochs", "bad_steps"))
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    return (type(epoch) is int and 0 <= epoch <= epochs_at_most and isinstance(history, list) and len(history) == epoch
            and type(state["best_epoch"]) is int and 0 <= state["best_epoch"] <= epoch and counts
            and isinstance(state["best_val"], float) and (np.isfinite(state["best_val"]) or epoch == 0)
            and type(state["seconds"]) is float and np.isfinite(state["seconds"]) and state["seconds"] >= 0
            and (best is None if state["best_epoch"] == 0 else isinstance(best, dict) and all(
                isinstance(t, torch.Tensor) for t in best.values())
                and {name: tuple(t.shape) for name, t in best.items()} == shapes))


STEP_RULE_BATCHES = 4  # the step rules count an epoch as at least this many steps (digits' 4 batches)


def batches_per_epoch(n_train, batch_size):
    """Optimiser steps an epoch over `n_train` images (a last batch of one image is skipped)."""
    return sum(min(batch_size, n_train - start) >= 2 for start in range(0, n_train, batch_size))


def step_rule_epochs(steps, steps_per_epoch):
    """The epochs that make `steps` optimiser steps (MIN_STEPS, PATIENCE_STEPS), an epoch counted as
    at least STEP_RULE_BATCHES steps: a dataset smaller than digits (a folder of 300 images: one
    batch an epoch) gets digits' 500 and 250 epochs, not 2000 and 1000 (results/tuning.md)."""
    return -(-steps // max(steps_per_epoch, STEP_RULE_BATCHES))


def _patience_spent(state, config):
    """Early stopping: PATIENCE epochs and PATIENCE_STEPS optimiser steps without a lower
    validation loss. Counting steps too keeps a small dataset (digits: 4 batches an epoch) from
    stopping after a few dozen steps, while on a large one (Fashion-MNIST: 190) epochs decide; an
    epoch of fewer than STEP_RULE_BATCHES steps counts as that many (step_rule_epochs)."""
    return state["bad_epochs"] >= config.patience and state.get("bad_steps", 0) >= config.patience_steps
