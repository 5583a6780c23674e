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


def test_latent_lof_is_the_local_outlier_factor_and_tells_density_apart_where_knn_cannot():
    """Two clusters of the bank: one tight (spacing 0.1), one loose (spacing 1). A code 1 away
    from each has the same kNN distance, but it is an outlier only beside the tight cluster."""
    from sklearn.neighbors import LocalOutlierFactor

    tight = torch.tensor([[0.1 * i, 0.0] for i in range(10)])
    loose = torch.tensor([[100.0 + i, 0.0] for i in range(10)])
    bank = torch.cat([tight, loose])
    codes = torch.tensor([[0.4, 1.0], [104.0, 1.0]])
    knn = evaluation.knn_distance(codes, bank, k=1)
    assert knn[0] == pytest.approx(knn[1], rel=0.02)
    lof = evaluation.lof_score(evaluation.fit_lof(bank, k=3), codes)
    assert lof[0] > 5 and lof[1] < 2  # about 1 for an inlier
    reference = LocalOutlierFactor(n_neighbors=3, novelty=True).fit(bank.double().numpy())
    assert lof == pytest.approx(-reference.score_samples(codes.double().numpy()))
    assert evaluation.fit_lof(bank[:1]) is None and evaluation.fit_lof(None) is None
    assert evaluation.fit_lof(bank[:3]).n_neighbors_ == 2  # k at most the bank's size - 1
    duplicates = evaluation.lof_score(evaluation.fit_lof(torch.zeros(8, 2)), codes)
    assert np.isfinite(duplicates).all()  # a bank of one repeated code: finite, no warning printed


def test_each_fusion_sums_its_own_members_and_none_is_made_without_the_score_it_needs():
    val = {"recon": np.array([1.0, 3.0]), "latent-knn": np.array([0.0, 2.0]), "latent-lof": np.array([1.0, 1.5]),
           "memory": np.array([2.0, 4.0])}
    stats = evaluation.fusion_stats(val)
    z = {name: (values - stats[name][0]) / stats[name][1] for name, values in val.items()}
    made = evaluation.fusions(stats, val)
    assert made["fused"] == pytest.approx(z["recon"] + z["latent-knn"] + z["memory"])
    assert made["fused-lof"] == pytest.approx(z["recon"] + z["latent-knn"] + z["latent-lof"] + z["memory"])
    older = {k: v for k, v in val.items() if k != "latent-lof"}  # a trial scored before latent-lof existed
    assert set(evaluation.fusions(stats, older)) == {"fused"}
    no_memory = {k: v for k, v in val.items() if k != "memory"}
    assert evaluation.fusions(stats, no_memory)["fused"] == pytest.approx(z["recon"] + z["latent-knn"])


NETWORK_SCORES = {"recon", "latent-knn", "latent-lof", "fused", "fused-lof"}
HIDDEN_SCORES = {"hidden-knn", "hidden-lof", "fused-hidden"}  # MLP encoders only


@pytest.mark.parametrize("preset, names", [("cascade", NETWORK_SCORES | {"memory"}),
                                           ("memae", NETWORK_SCORES | {"memory"}),
                                           ("ae", NETWORK_SCORES),
                                           ("vae", NETWORK_SCORES),
                                           ("cascade-mlp", NETWORK_SCORES | HIDDEN_SCORES | {"memory"}),
                                           ("ae-mlp", NETWORK_SCORES | HIDDEN_SCORES)])
def test_every_network_gets_every_score_that_applies(preset, names):
    torch.manual_seed(0)
    model = build_model(preset, (1, 8, 8), model_config()).eval()
    train, val, test = (torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8) for n in (50, 20, 30))
    bank = evaluation.latent_bank(model, train, seed=0, size=40)
    assert bank.shape == (40, 128) and torch.equal(bank, evaluation.latent_bank(model, train, seed=0, size=40))
    assert bank.dtype == torch.float32 and torch.equal(bank, bank.half().float())  # what bank.pt stores, exactly
    hidden = evaluation.hidden_bank(model, train, seed=0, size=30)
    if "hidden-knn" in names:  # the first hidden layer of the MLP encoder, of the first 30 images of the same draw
        assert hidden.shape == (30, 512) and torch.equal(hidden, hidden.half().float())
        drawn = np.sort(np.random.default_rng(0).permutation(50)[:30])
        first = evaluation.network_outputs(model, scale_images(train[torch.from_numpy(drawn)]))["hidden"]
        assert torch.equal(hidden, first.half().float())
    else:
        assert hidden is None
    scores, stats = evaluation.network_scores(model, scale_images(val), scale_images(test), bank, hidden)
    assert set(scores) == names and set(stats) == names - {"fused", "fused-lof", "fused-hidden"}
    if hidden is not None:
        z = {n: (scores[n][1] - stats[n][0]) / stats[n][1] for n in ("recon", "hidden-knn", "hidden-lof", "memory")
             if n in stats}
        assert scores["fused-hidden"][1] == pytest.approx(sum(z.values()))
        alone = evaluation.image_scores(model, scale_images(test), None, None, hidden, evaluation.fit_lof(hidden))
        assert (alone["hidden-knn"] == scores["hidden-knn"][1]).all() and (alone["hidden-lof"] == scores["hidden-lof"][1]).all()
    for name, (val_scores, test_scores) in scores.items():
        assert val_scores.shape == (20,) and test_scores.shape == (30,) and np.isfinite(test_scores).all()
    # recon is exactly anomaly_scores; the fused validation scores are centred
    assert (scores["recon"][1] == evaluation.anomaly_scores(model, scale_images(test))).all()
    assert scores["fused"][0].mean() == pytest.approx(0.0, abs=1e-9)
    assert (evaluation.image_scores(model, scale_images(test), bank)["latent-knn"] == scores["latent-knn"][1]).all()
    refitted = evaluation.image_scores(model, scale_images(test), bank, evaluation.fit_lof(bank))["latent-lof"]
    assert (refitted == scores["latent-lof"][1]).all()  # the LOF fitted again on the same bank: the same scores
