"""Speed never changed the method: the lean training loop and the fast evaluation give the losses
and scores of a plain, textbook PyTorch loop on a fixed seed (within float tolerance)."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import model_config, train_config
from models import build_model
from tool.evaluation import anomaly_scores
from tool.train import seed_everything, train_model

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


def lean_training(preset, images, seed, tmp_path):
    seed_everything(seed)
    model = build_model(preset, images.shape[1:], model_config())
    config = train_config(epochs=EPOCHS, patience=EPOCHS, batch_size=BATCH)
    result = train_model(model, images, images[:16], config, tmp_path / "last.pt", seed)
    model.load_state_dict(torch.load(tmp_path / "last.pt", weights_only=True)["model"])  # last epoch, not best
    return [h["train_loss"] for h in result.history], anomaly_scores(model, images)


@pytest.mark.parametrize("preset", ["cascade", "cascade-released", "memae", "vae"])
def test_lean_loop_matches_a_plain_loop(preset, tmp_path):
    images = torch.rand(100, 1, 8, 8) * 2 - 1
    lean_losses, lean_scores = lean_training(preset, images, 3, tmp_path)
    # the same Adam arithmetic (fused, as the lean loop uses on CPU): equal to float rounding
    plain_losses, plain_scores = plain_training(preset, images, 3, fused=True)
    assert lean_losses == pytest.approx(plain_losses, rel=1e-6)
    assert lean_scores == pytest.approx(plain_scores, rel=1e-6)
    # the textbook unfused Adam rounds differently; top-k choices amplify that a little
    plain_losses, plain_scores = plain_training(preset, images, 3, fused=False)
    assert lean_losses == pytest.approx(plain_losses, rel=1e-4)
    assert lean_scores == pytest.approx(plain_scores, rel=5e-3)


def test_evaluation_batch_size_does_not_change_scores():
    seed_everything(0)
    model = build_model("cascade", (1, 28, 28), model_config()).eval()
    images = torch.rand(600, 1, 28, 28) * 2 - 1
    assert (anomaly_scores(model, images, batch_size=256) == anomaly_scores(model, images, batch_size=4096)).all()
