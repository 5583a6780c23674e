"""Tests of tool/train.py: the lean loop against a plain PyTorch loop, resuming mid-run, a diverging loss."""
import struct

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import main
from conftest import model_config, results_of, run_main, train_config
from models import build_model
from tool import train
from tool.seeding import seed_everything
from tool.speed import uses_channels_last
from tool.train import train_model


# ---------------------------------------------------------------------------------------------
# Speed never changed the method: the lean training loop gives the losses and scores of a plain,
# textbook PyTorch loop on a fixed seed (within float tolerance)
# ---------------------------------------------------------------------------------------------
EPOCHS, BATCH = 3, 32


def plain_training(preset, images, seed, fused):
    """The reference: a DataLoader over a TensorDataset, Adam, .item() after every batch."""
    seed_everything(seed)
    model = build_model(preset, images.shape[1:], model_config())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=False, fused=fused)
    shuffle = torch.Generator().manual_seed(seed)  # the batch order the lean loop draws
    losses = []
    for _ in range(EPOCHS):
        model.train()
        order = torch.randperm(len(images), generator=shuffle).tolist()
        batches = [order[i:i + BATCH] for i in range(0, len(order), BATCH)]
        total = 0.0
        # its own generator: a DataLoader otherwise draws a seed from torch's global one per epoch
        for (xb,) in DataLoader(TensorDataset(images), batch_sampler=batches, generator=torch.Generator()):
            loss = model(xb)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(xb)
        losses.append(total / len(images))
    return losses, anomaly_scores(model, images, batch_size=7)


@torch.inference_mode()
def anomaly_scores(model, images, batch_size=256):
    """The L2 norm of each image's reconstruction error (as tool.scores gives recon), of float images."""
    model.eval()
    return torch.cat([torch.linalg.vector_norm((model(xb)["recon"] - xb).flatten(1), dim=1)
                      for xb in images.split(batch_size)]).double().numpy()


def lean_training(preset, images, seed, tmp_path, channels_last=False, **settings):
    """The project's loop; in the plain loop's memory layout unless channels_last (the layout
    training picks for conv models on a CPU, compared within float tolerance below)."""
    seed_everything(seed)
    model = build_model(preset, images.shape[1:], model_config())
    config = train_config(epochs=EPOCHS, patience=EPOCHS, batch_size=BATCH, **settings)
    result = train_model(model, images, images[:16], config, tmp_path / "last.pt", seed, channels_last=channels_last)
    model.load_state_dict(torch.load(tmp_path / "last.pt", weights_only=True)["model"])  # last epoch, not best
    return [h["train_loss"] for h in result.history], anomaly_scores(model, images)


# MemAE's hard shrinkage (relu(w - lambda)) is discontinuous: it amplifies float rounding (seen: 6e-4
# in the third loss against the unfused Adam on an AVX-512 CPU), where the others stay within 1e-4
SHRINKAGE_REL = 5e-3


@pytest.mark.parametrize("preset", ["cascade", "cascade-released", "memae", "vae"])
def test_lean_loop_matches_a_plain_loop(preset, tmp_path):
    images = torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    lean_losses, lean_scores = lean_training(preset, images, 3, tmp_path)
    # the same Adam arithmetic (fused, as the lean loop uses on CPU): equal to float rounding
    plain_losses, plain_scores = plain_training(preset, images, 3, fused=True)
    assert lean_losses == pytest.approx(plain_losses, rel=1e-6)
    assert lean_scores == pytest.approx(plain_scores, rel=1e-6)
    # the textbook unfused Adam rounds differently; top-k choices amplify that a little, MemAE's
    # shrinkage more
    plain_losses, plain_scores = plain_training(preset, images, 3, fused=False)
    assert lean_losses == pytest.approx(plain_losses, rel=SHRINKAGE_REL if preset == "memae" else 1e-4)
    assert lean_scores == pytest.approx(plain_scores, rel=5e-3)


@pytest.mark.parametrize("preset", ["cascade", "memae", "vae"])
def test_channels_last_changes_only_float_rounding(preset, tmp_path):
    """Training picks channels-last for conv models on a CPU: the same losses and scores as the
    usual layout, to float rounding (convolutions sum in another order)."""
    images = torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    usual = lean_training(preset, images, 3, tmp_path / "usual")
    channels_last = lean_training(preset, images, 3, tmp_path / "cl", channels_last=True)
    # MemAE's shrinkage amplifies the rounding (SHRINKAGE_REL); the cascade's and VAE's stays within 1e-5
    loss_rel, score_rel = (SHRINKAGE_REL, SHRINKAGE_REL) if preset == "memae" else (1e-5, 1e-4)
    assert channels_last[0] == pytest.approx(usual[0], rel=loss_rel)
    assert channels_last[1] == pytest.approx(usual[1], rel=score_rel)
    assert uses_channels_last(build_model(preset, (1, 8, 8), model_config()), "cpu")
    assert not uses_channels_last(build_model("cascade-mlp", (1, 8, 8), model_config()), "cpu")


def test_bf16_trains_close_to_fp32_and_repeats_exactly(tmp_path):
    """PRECISION = "bf16": autocast for the training and validation passes; the same seed gives the
    same losses again, within 10% of fp32's on random images; scores are float64 numbers."""
    images = torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fp32 = lean_training("cascade", images, 3, tmp_path / "fp32")
    bf16 = lean_training("cascade", images, 3, tmp_path / "a", precision="bf16")
    again = lean_training("cascade", images, 3, tmp_path / "b", precision="bf16")
    assert bf16[0] == again[0] and (bf16[1] == again[1]).all()
    assert bf16[0] == pytest.approx(fp32[0], rel=0.1) and bf16[0] != fp32[0]
    assert bf16[1].dtype.name == "float64"


# ---------------------------------------------------------------------------------------------
# Checkpoints every epoch, divergence
# ---------------------------------------------------------------------------------------------
def test_resume_after_an_interrupted_epoch_ends_like_an_uninterrupted_run(data_dir, tmp_path, monkeypatch):
    args = ["--classes", "5", "--seeds", "0", "--epochs", "8", "--patience", "8"]
    whole = results_of(run_main(data_dir, tmp_path / "whole", *args))["class5_seed0"]

    real_evaluate, calls = train.validation_pass, []

    def interrupt_in_epoch_4(*a, **k):
        calls.append(1)
        if len(calls) == 4:  # epoch 4 has trained but is not checkpointed yet
            raise KeyboardInterrupt
        return real_evaluate(*a, **k)

    monkeypatch.setattr(train, "validation_pass", interrupt_in_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        run_main(data_dir, tmp_path / "cut", *args)
    monkeypatch.setattr(train, "validation_pass", real_evaluate)
    run_dir, = (tmp_path / "cut").glob("digits/cascade/*")
    checkpoint = torch.load(run_dir / "class5_seed0" / "last.pt", weights_only=True)
    assert checkpoint["state"]["epoch"] == 3
    main.run(["--resume", str(run_dir)])
    resumed = results_of(run_dir)["class5_seed0"]
    assert resumed["test_scores"] == whole["test_scores"]
    assert resumed["metrics"] == whole["metrics"]
    assert resumed["history"]["val_loss"] == whole["history"]["val_loss"]


def event_records(path):
    """[(the record's bytes, its Event)] of a TensorBoard event file (TFRecord framing: length,
    its CRC, data, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    data, at, records = path.read_bytes(), 0, []
    while at + 12 <= len(data):
        size = struct.unpack("<Q", data[at:at + 8])[0]
        records.append((data[at:at + 12 + size + 4], Event.FromString(data[at + 12:at + 12 + size])))
        at += 12 + size + 4
    return records


def logged_epochs(tb):
    """The epochs of loss/train TensorBoard shows from the event files in `tb`: a session start at
    step s (SummaryWriter's purge_step) hides what earlier files and events logged at steps >= s."""
    from tensorboardX.proto.event_pb2 import SessionLog

    steps = []
    for path in sorted(tb.glob("events.out.tfevents.*")):
        for _, event in event_records(path):
            if event.session_log.status == SessionLog.START:
                steps = [s for s in steps if s < event.step]
            steps += [event.step for v in event.summary.value if v.tag == "loss/train"]
    return steps


def test_after_a_kill_and_resume_the_logs_hold_every_epoch_once(data_dir, tmp_path, monkeypatch):
    """Issue 12 (15): tensorboardX writes events from a queue, so a process killed just after a
    checkpoint may lose that epoch's log lines; the resumed trial logs the checkpoint's epochs again."""
    args = ["--classes", "5", "--seeds", "0", "--epochs", "5", "--patience", "5"]
    real_evaluate, calls = train.validation_pass, []

    def interrupt_in_epoch_4(*a, **k):
        calls.append(1)
        if len(calls) == 4:  # epochs 1-3 checkpointed and logged
            raise KeyboardInterrupt
        return real_evaluate(*a, **k)

    monkeypatch.setattr(train, "validation_pass", interrupt_in_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        run_main(data_dir, tmp_path, *args)
    monkeypatch.setattr(train, "validation_pass", real_evaluate)
    run_dir, = tmp_path.glob("digits/cascade/*")
    tb = run_dir / "class5_seed0" / "tb"
    events, = tb.glob("events.out.tfevents.*")
    assert logged_epochs(tb) == [1, 2, 3]
    # as after kill -9 right after the checkpoint of epoch 3: its lines never reached the file
    events.write_bytes(b"".join(raw for raw, event in event_records(events) if event.step != 3))
    main.run(["--resume", str(run_dir)])
    assert logged_epochs(tb) == [1, 2, 3, 4, 5]


def test_nan_loss_stops_with_the_epoch_named(tmp_path):
    class Diverging(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))
            self.calls = 0

        def forward(self, x):
            self.calls += self.training
            loss = (self.w * x).pow(2).mean() * (float("nan") if self.calls > 6 else 1.0)
            return {"recon": x, "loss": loss, "memory": []}

    x = torch.randn(40, 1, 2, 2)
    config = train_config(epochs=5, patience=5, batch_size=16)  # 3 batches per epoch
    checkpoint = tmp_path / "last.pt"
    with pytest.raises(train.TrainingDiverged, match="epoch 3"):
        train.train_model(Diverging(), x, x[:8], config, checkpoint, generator_seed=0)
    assert torch.load(checkpoint, weights_only=True)["state"]["epoch"] == 2  # the last good one is kept


class _Flat(torch.nn.Module):
    """A model whose validation loss never improves after its first epoch."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return {"recon": x, "loss": (self.w * 0 + 1.0).sum(), "memory": []}


@pytest.mark.parametrize("patience_steps, epochs_trained", [(0, 3), (12, 4), (100, 10)])
def test_early_stopping_counts_epochs_and_optimiser_steps(tmp_path, patience_steps, epochs_trained):
    """PATIENCE = 2 epochs and PATIENCE_STEPS steps without a lower validation loss; 5 batches an
    epoch: 0 steps stops after epoch 3, 12 steps after epoch 4 (15 steps), 100 never (10 epochs)."""
    x = torch.randn(80, 1, 2, 2)
    config = train_config(epochs=10, patience=2, patience_steps=patience_steps, batch_size=16)
    result = train_model(_Flat(), x, x[:8], config, tmp_path / "last.pt", generator_seed=0, log=None)
    assert (result.epochs_trained, result.best_epoch, result.stopped_early) == (
        epochs_trained, 1, epochs_trained < 10)


@pytest.mark.parametrize("min_steps, epochs_trained", [(0, 2), (11, 3), (16, 4)])
def test_min_steps_gives_a_small_dataset_more_epochs(tmp_path, min_steps, epochs_trained):
    """EPOCHS = 2, 5 batches an epoch: MIN_STEPS = 11 needs 3 epochs, 16 needs 4."""
    x = torch.randn(80, 1, 2, 2)
    config = train_config(epochs=2, min_steps=min_steps, patience=100, batch_size=16)
    result = train_model(_Flat(), x, x[:8], config, tmp_path / "last.pt", generator_seed=0, log=None)
    assert result.epochs_trained == epochs_trained


@pytest.mark.parametrize("images, min_steps, patience_steps, epochs_trained", [
    (40, 16, 1000, 4),   # 3 batches an epoch, counted as 4: MIN_STEPS 16 -> 4 epochs (not 6)
    (16, 16, 1000, 4),   # 1 batch an epoch, counted as 4: the same 4 epochs (not 16)
    (16, 400, 8, 3),     # patience: 2 epochs without a better loss count 8 steps, not 2
    (80, 16, 1000, 4),   # 5 batches: the rule as before (16 steps -> 4 epochs)
])
def test_step_rules_count_an_epoch_as_at_least_four_steps(tmp_path, images, min_steps, patience_steps,
                                                          epochs_trained):
    """A dataset smaller than digits (a folder of 300 images is one batch an epoch) gets digits'
    epochs from MIN_STEPS and PATIENCE_STEPS, not 4 times as many: 2000 steps were 2000 epochs."""
    x = torch.randn(images, 1, 2, 2)
    config = train_config(epochs=1, min_steps=min_steps, patience=2, patience_steps=patience_steps, batch_size=16)
    result = train_model(_Flat(), x, x[:8], config, tmp_path / "last.pt", generator_seed=0, log=None)
    assert result.epochs_trained == epochs_trained
    assert train.step_rule_epochs(2000, 4) == 500 and train.step_rule_epochs(2000, 1) == 500
    assert train.step_rule_epochs(2000, 190) == 11  # Fashion-MNIST: EPOCHS decides


def test_nan_loss_in_the_first_epoch_claims_no_checkpoint(tmp_path):
    """Issue 12: a NaN in epoch 1 said 'the last good checkpoint (epoch 0) is kept', of a file that
    was never written."""
    class NaNAtOnce(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            return {"recon": x, "loss": (self.w * x).pow(2).mean() * float("nan"), "memory": []}

    x = torch.randn(40, 1, 2, 2)
    checkpoint = tmp_path / "last.pt"
    with pytest.raises(train.TrainingDiverged) as error:
        train.train_model(NaNAtOnce(), x, x[:8], train_config(epochs=5, patience=5, batch_size=16), checkpoint, 0)
    assert "in epoch 1. No epoch finished, so no checkpoint was kept." in str(error.value)
    assert "epoch 0" not in str(error.value) and not checkpoint.exists()


def test_checkpoint_seconds_spares_the_writes_of_short_epochs_and_resume_stays_exact(tmp_path):
    """CHECKPOINT_SECONDS: last.pt after epoch 1, then only once that many seconds have passed;
    a resume from the older checkpoint replays the epochs after it exactly."""
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 4)

        def forward(self, x):
            recon = self.layer(x.flatten(1)).view_as(x)
            return {"recon": recon, "loss": (recon - x).pow(2).mean(), "memory": []}

    torch.manual_seed(0)
    x = torch.randn(40, 1, 2, 2)
    config = train_config(epochs=4, patience=100, batch_size=16, checkpoint_seconds=1e9)
    done = train_model(Tiny(), x, x[:8], config, tmp_path / "last.pt", generator_seed=0, log=None)
    checkpoint = torch.load(tmp_path / "last.pt", weights_only=True)
    assert done.epochs_trained == 4 and checkpoint["state"]["epoch"] == 1
    again = train_model(Tiny(), x, x[:8], config, tmp_path / "last.pt", generator_seed=0, log=None)
    losses = [h["train_loss"] for h in done.history]
    assert [h["train_loss"] for h in again.history] == losses and len(set(losses)) == 4  # replayed, bit for bit


def test_cpu_lacks_bf16_reads_the_cpu_flags(tmp_path):
    from tool.speed import cpu_lacks_bf16

    avx2, bf16, amx = (tmp_path / n for n in ("avx2", "bf16", "amx"))
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    bf16.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    amx.write_text("flags\t: avx2 amx_bf16 amx_tile\n")
    assert cpu_lacks_bf16("cpu", avx2)
    assert not cpu_lacks_bf16("cpu", bf16)
    assert not cpu_lacks_bf16("cpu", amx)
    assert not cpu_lacks_bf16("cpu", tmp_path / "absent")  # cannot tell: no warning
    (tmp_path / "noflags").write_text("processor\t: 0\n")
    assert not cpu_lacks_bf16("cpu", tmp_path / "noflags")
    assert not cpu_lacks_bf16("cuda", avx2)  # a GPU's autocast does not depend on the CPU


def test_ssl_in_validation_false_picks_the_epoch_by_the_loss_without_the_task(tmp_path, monkeypatch):
    """SSL_IN_VALIDATION = False: the validation loss that picks the best epoch is the model's
    loss without the task's term (here the autoencoder's MSE), never the task's."""
    torch.manual_seed(0)
    model = build_model("ae", (1, 8, 8), model_config(ssl="transforms-flips")).eval()
    x = torch.rand(40, 1, 8, 8)
    with_task, _ = train.validation_pass(model, x, batch_size=16)
    without, _ = train.validation_pass(model, x, batch_size=16, with_task=False)
    with torch.no_grad():
        mse = sum(float(model(x[i:i + 16])["rec_loss"]) * len(x[i:i + 16]) for i in range(0, 40, 16)) / 40
    assert without == pytest.approx(mse, rel=1e-5) and with_task > without + 0.5  # the task's loss: ~ 8 ln 8 / 8

    real, asked = train.validation_pass, []
    monkeypatch.setattr(train, "validation_pass", lambda *a, **k: asked.append(k.get("with_task")) or real(*a, **k))
    result = train_model(model.train(), x, x[:16], train_config(epochs=2, batch_size=16, ssl_in_validation=False),
                         tmp_path / "last.pt", 0)
    assert asked == [False, False] and result.best_val_loss < with_task
