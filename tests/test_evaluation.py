"""Tests of tool/evaluation.py: metrics, the validation threshold, every anomaly score and their batching."""
import numpy as np
import pytest
import torch

from conftest import model_config
from models import build_model
from tool import evaluation
from tool.datasets import scale_images
from tool.evaluation import anomaly_scores, compute_metrics, validation_threshold
from tool.train import seed_everything


def test_perfect_scores():
    m = compute_metrics([0.1, 0.2, 0.3, 0.9, 0.8], [0, 0, 0, 1, 1], threshold=0.5)
    assert m == {"auroc": 1.0, "auprc": 1.0, "f1_oracle": 1.0, "f1_val_threshold": 1.0}


def test_reversed_scores_are_not_flipped():
    m = compute_metrics([0.9, 0.8, 0.7, 0.1, 0.2], [0, 0, 0, 1, 1])
    assert m["auroc"] == 0.0  # below 0.5 is reported as it is


def test_ties_give_chance():
    targets = [0, 0, 0, 1]
    m = compute_metrics([1.0, 1.0, 1.0, 1.0], targets, threshold=0.5)
    assert m["auroc"] == 0.5
    assert m["auprc"] == pytest.approx(0.25)  # the prevalence
    assert m["f1_oracle"] == pytest.approx(2 * 0.25 / 1.25)  # everything flagged: P 0.25, R 1
    assert m["f1_val_threshold"] == pytest.approx(0.4)


def test_known_values():
    # pairs (anomaly, normal): 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3 of 4
    m = compute_metrics([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], threshold=0.5)
    assert m["auroc"] == pytest.approx(0.75)
    assert m["auprc"] == pytest.approx((1.0 + 2 / 3) / 2)  # precision 1 at recall .5, 2/3 at recall 1
    assert m["f1_oracle"] == pytest.approx(0.8)  # threshold 0.35: P 2/3, R 1
    assert m["f1_val_threshold"] == pytest.approx(2 / 3)  # only 0.8 flagged: P 1, R 0.5


def test_metrics_refuse_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="both"):
        compute_metrics([0.1, 0.2], [0, 0])


def test_validation_threshold_is_a_percentile_of_validation_scores():
    scores = np.arange(101, dtype=float)
    assert validation_threshold(scores, 95) == 95.0
    assert (scores > validation_threshold(scores, 95)).mean() == pytest.approx(5 / 101)


def test_anomaly_score_is_l2_norm_of_reconstruction_error():
    class Halve(torch.nn.Module):
        def forward(self, x):
            return {"recon": x / 2}

    x = torch.tensor([[[[3.0, 4.0]]], [[[0.0, 2.0]]]])  # (2, 1, 1, 2)
    assert evaluation.anomaly_scores(Halve(), x, batch_size=1).tolist() == [2.5, 1.0]


def test_evaluation_batch_size_does_not_change_scores():
    seed_everything(0)
    model = build_model("cascade", (1, 28, 28), model_config()).eval()
    images = torch.rand(600, 1, 28, 28) * 2 - 1
    assert (anomaly_scores(model, images, batch_size=256) == anomaly_scores(model, images, batch_size=4096)).all()


# ---------------------------------------------------------------------------------------------
# The scores beyond the reconstruction error
# ---------------------------------------------------------------------------------------------
def test_knn_distance_is_the_mean_euclidean_distance_to_the_nearest_codes():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    codes = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    # [2, 0]: distances 1, sqrt(5), 3 -> k=1: 1, k=2: (1 + sqrt(5)) / 2; [1, 1]: 1, 1, sqrt(5)
    assert evaluation.knn_distance(codes, bank, k=1) == pytest.approx([1.0, 1.0])
    assert evaluation.knn_distance(codes, bank, k=2) == pytest.approx([(1 + 5 ** 0.5) / 2, 1.0])
    assert evaluation.knn_distance(codes, bank[:1], k=5) == pytest.approx([1.0, 1.0])  # k <= bank size


def test_fused_standardises_with_the_validation_statistics():
    val = {"a": np.array([1.0, 3.0]), "b": np.array([10.0, 10.0])}  # b has no spread: divided by 1
    stats = evaluation.fusion_stats(val)
    assert stats == {"a": [2.0, 1.0], "b": [10.0, 1.0]}
    assert evaluation.fused(stats, {"a": np.array([4.0]), "b": np.array([12.0])}) == pytest.approx([2.0 + 2.0])
    assert evaluation.fused(stats, val) == pytest.approx([-1.0, 1.0])


@pytest.mark.parametrize("preset, names", [("cascade", {"recon", "latent-knn", "memory", "fused"}),
                                           ("memae", {"recon", "latent-knn", "memory", "fused"}),
                                           ("ae", {"recon", "latent-knn", "fused"}),
                                           ("vae", {"recon", "latent-knn", "fused"})])
def test_every_network_gets_every_score_that_applies(preset, names):
    torch.manual_seed(0)
    model = build_model(preset, (1, 8, 8), model_config()).eval()
    train, val, test = (torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8) for n in (50, 20, 30))
    bank = evaluation.latent_bank(model, train, seed=0, size=40)
    assert bank.shape == (40, 128) and torch.equal(bank, evaluation.latent_bank(model, train, seed=0, size=40))
    assert bank.dtype == torch.float32 and torch.equal(bank, bank.half().float())  # what bank.pt stores, exactly
    scores, stats = evaluation.network_scores(model, scale_images(val), scale_images(test), bank)
    assert set(scores) == names and set(stats) == names - {"fused"}
    for name, (val_scores, test_scores) in scores.items():
        assert val_scores.shape == (20,) and test_scores.shape == (30,) and np.isfinite(test_scores).all()
    # recon is exactly anomaly_scores; the fused validation scores are centred
    assert (scores["recon"][1] == evaluation.anomaly_scores(model, scale_images(test))).all()
    assert scores["fused"][0].mean() == pytest.approx(0.0, abs=1e-9)
    assert (evaluation.image_scores(model, scale_images(test), bank)["latent-knn"] == scores["latent-knn"][1]).all()
