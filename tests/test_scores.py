"""Tests of tool/scores.py: every score, the banks, the fusions, the scorer's state, and the
self-supervised scores."""
import numpy as np
import pytest
import torch

from conftest import model_config
from models import build_model
from tool import scores
from tool.data.datasets import scale_images
from tool.scores import FUSIONS, SCORES, Scorer, features_of, names_of, network_outputs, recommended
from tool.seeding import seed_everything


def u8(n, shape=(1, 8, 8), seed=0):
    return torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.fixture
def small_banks(monkeypatch):
    monkeypatch.setitem(scores.BANK_SIZES, "code", 40)
    monkeypatch.setitem(scores.BANK_SIZES, "hidden", 30)
    monkeypatch.setitem(scores.BANK_SIZES, "views", 30)


def test_recon_is_the_l2_norm_of_the_reconstruction_error_and_batches_do_not_change_it():
    class Halve(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Identity()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return {"recon": x / 2, "latent": x.flatten(1), "memory": []}

    pixels = torch.tensor([[[[0, 255]]], [[[255, 255]]]], dtype=torch.uint8)  # scaled: [-1, 1] and [1, 1]
    assert network_outputs(Halve(), pixels)["recon"].tolist() == pytest.approx([(0.5 ** 2 + 0.5 ** 2) ** 0.5] * 2)
    seed_everything(0)
    model = build_model("cascade", (1, 28, 28), model_config()).eval()
    images = u8(600, (1, 28, 28))
    one = network_outputs(model, images)["recon"]
    in_parts = [network_outputs(model, part)["recon"] for part in images.split(100)]
    assert torch.equal(one, torch.cat(in_parts))


def test_knn_distance_is_the_mean_euclidean_distance_to_the_nearest_codes():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    codes = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    # [2, 0]: distances 1, sqrt(5), 3 -> k=1: 1, k=2: (1 + sqrt(5)) / 2; [1, 1]: 1, 1, sqrt(5)
    assert scores.knn_distance(codes, bank, k=1) == pytest.approx([1.0, 1.0])
    assert scores.knn_distance(codes, bank, k=2) == pytest.approx([(1 + 5 ** 0.5) / 2, 1.0])
    assert scores.knn_distance(codes, bank[:1], k=5) == pytest.approx([1.0, 1.0])  # k <= bank size


def test_csi_score_is_minus_the_best_cosine_times_the_norm():
    bank = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    codes = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    assert scores.csi_score(codes, bank) == pytest.approx([-3.0, -(2 ** -0.5) * 2 ** 0.5])


def test_latent_lof_is_the_local_outlier_factor_and_tells_density_apart_where_knn_cannot():
    """Two clusters of the bank: one tight (spacing 0.1), one loose (spacing 1). A code 1 away
    from each has the same kNN distance, but it is an outlier only beside the tight cluster."""
    from sklearn.neighbors import LocalOutlierFactor

    tight = torch.tensor([[0.1 * i, 0.0] for i in range(10)])
    loose = torch.tensor([[100.0 + i, 0.0] for i in range(10)])
    bank = torch.cat([tight, loose])
    codes = torch.tensor([[0.4, 1.0], [104.0, 1.0]])
    knn = scores.knn_distance(codes, bank, k=1)
    assert knn[0] == pytest.approx(knn[1], rel=0.02)
    lof = scores.lof_score(scores.fit_lof(bank, k=3), codes)
    assert lof[0] > 5 and lof[1] < 2  # about 1 for an inlier
    reference = LocalOutlierFactor(n_neighbors=3, novelty=True).fit(bank.double().numpy())
    assert lof == pytest.approx(-reference.score_samples(codes.double().numpy()))
    assert scores.fit_lof(bank[:1]) is None
    assert scores.fit_lof(bank[:3]).n_neighbors_ == 2  # k at most the bank's size - 1
    assert np.isfinite(scores.lof_score(scores.fit_lof(torch.zeros(8, 2)), codes)).all()  # no warning, finite


def test_each_fusion_sums_its_own_standardised_members_and_none_is_made_without_the_one_it_needs():
    val = {"recon": np.array([1.0, 3.0]), "latent-knn": np.array([0.0, 2.0]), "latent-lof": np.array([1.0, 1.5]),
           "memory": np.array([2.0, 4.0]), "flat": np.array([5.0, 5.0])}
    stats = scores.validation_stats(val)
    assert stats["flat"] == [5.0, 1.0]  # no spread: divided by 1
    z = {name: (values - stats[name][0]) / stats[name][1] for name, values in val.items()}
    made = scores.fusions(stats, val)
    assert made["fused"] == pytest.approx(z["recon"] + z["latent-knn"] + z["memory"])
    assert made["fused-lof"] == pytest.approx(z["recon"] + z["latent-knn"] + z["latent-lof"] + z["memory"])
    assert set(scores.fusions(stats, {k: v for k, v in val.items() if k != "latent-lof"})) == {"fused"}
    no_memory = {k: v for k, v in val.items() if k != "memory"}
    assert scores.fusions(stats, no_memory)["fused"] == pytest.approx(z["recon"] + z["latent-knn"])


def test_fused_ssl_counts_each_member_as_at_least_one_spread_below_its_mean_and_the_other_fusions_do_not():
    members = scores.FUSIONS["fused-ssl"].members
    val = {m: np.array([0.0, 2.0]) for m in members}  # mean 1, spread 1 for every member
    stats = scores.validation_stats(val)
    test = {m: np.array([1.0, 1.0]) for m in members}
    test["csi"] = np.array([-4.0, 1.0])  # z = -5 for image 0: far more "normal" than any validation image
    made = scores.fusions(stats, test)
    assert made["fused-ssl"] == pytest.approx([-1.0, 0.0])  # counted as -1, not -5
    assert made["fused-lof"] == pytest.approx([0.0, 0.0])  # csi is no member of fused-lof
    low = {m: np.array([-4.0]) for m in members}  # every member at z = -5
    assert scores.fusions(stats, low)["fused-lof"] == pytest.approx([-20.0])  # no floor: as it is
    assert scores.fusions(stats, low)["fused-ssl"] == pytest.approx([-8.0])
    assert scores.fused_sum([np.array([-3.0, 2.0])], floor=-1) == pytest.approx([-1.0, 2.0])
    assert scores.fused_sum([np.array([-3.0, 2.0])]) == pytest.approx([-3.0, 2.0])


NETWORK = {"recon", "latent-knn", "latent-lof", "fused", "fused-lof"}
HIDDEN = {"hidden-knn", "hidden-lof", "fused-hidden"}  # MLP encoders only
SSL = {"transform", "views-knn", "views-lof", "csi", "fused-ssl"}  # a self-supervised task


@pytest.mark.parametrize("preset, ssl, names", [
    ("cascade", None, NETWORK | {"memory"}), ("memae", None, NETWORK | {"memory"}), ("ae", None, NETWORK),
    ("vae", None, NETWORK), ("cascade-mlp", None, NETWORK | HIDDEN | {"memory"}), ("ae-mlp", None, NETWORK | HIDDEN),
    ("cascade", "transforms", NETWORK | SSL | {"memory"}), ("ae", "contrastive", NETWORK | SSL),
    ("vae", "transforms", NETWORK | SSL)])
def test_every_network_gets_every_score_that_applies(preset, ssl, names, small_banks):
    torch.manual_seed(0)
    model = build_model(preset, (1, 8, 8), model_config(ssl=ssl)).eval()
    assert set(names_of(features_of(model))) == names
    train, val, test = u8(50), u8(20, seed=1), u8(30, seed=2)
    scorer = Scorer.fit(model, train, val, seed=0, percentile=95.0)
    assert set(scorer.names) == names and set(scorer.thresholds) == names
    assert set(scorer.val_stats) == names - set(FUSIONS)
    drawn = {size: train[torch.from_numpy(np.sort(np.random.default_rng(0).permutation(50)[:size]))] for size in (30, 40)}
    code = network_outputs(model, drawn[40])["code"]
    assert torch.equal(scorer.banks["code"], code.half().float())  # what bank.pt stores, exactly
    if "hidden" in scorer.banks:
        assert torch.equal(scorer.banks["hidden"], network_outputs(model, drawn[30])["hidden"].half().float())
    if "views" in scorer.banks:
        views = network_outputs(model, drawn[30])["views"]
        assert scorer.banks["views"].shape == (4, 30, 128) and torch.equal(scorer.banks["views"], views.half().float())
    found = scorer.scores(test)
    assert set(found) == names and all(v.shape == (30,) and np.isfinite(v).all() for v in found.values())
    val_scores = scorer.scores(val)
    for name in names:
        assert scorer.thresholds[name] == float(np.percentile(val_scores[name], 95.0))
    assert val_scores["fused"].mean() == pytest.approx(0.0, abs=1e-9)  # standardised on the validation images
    assert (found["recon"] == network_outputs(model, test)["recon"].numpy()).all()
    for name in names:  # one score asked for: only what it needs is computed, the same values
        assert (scorer.scores(test, [name])[name] == found[name]).all()
    restored = Scorer.from_state(model, scorer.state())
    assert set(restored.names) == names and all((restored.scores(test)[n] == found[n]).all() for n in names)


def test_the_self_supervised_scores_read_the_rotations():
    """transform sums over the K rotations the head's negative log-likelihood of the right one;
    views-knn sums each rotation's kNN distance among the same rotation's bank."""
    torch.manual_seed(0)
    model = build_model("ae", (1, 8, 8), model_config(ssl="transforms")).eval()
    images = u8(6)
    out = network_outputs(model, images)
    x = scale_images(images)
    rotated = torch.cat([torch.rot90(x, k, (2, 3)) for k in range(4)])
    with torch.no_grad():
        codes = model.encoder(rotated)
        logp = torch.log_softmax(model.ssl.head(codes).double(), dim=1).view(4, 6, 4)
    assert torch.allclose(out["views"], codes.view(4, 6, -1), atol=1e-6)
    assert torch.allclose(out["transform_nll"], -sum(logp[t, :, t] for t in range(4)), atol=1e-5)
    assert torch.allclose(out["code"], out["views"][0])  # copy 0 is the image itself
    bank = torch.randn(4, 10, 128)
    scorer = Scorer(model, {"views": bank})
    expected = sum(scores.knn_distance(out["views"][t], bank[t]) for t in range(4))
    assert scorer._score("views-knn", out) == pytest.approx(expected)


def test_transforms_flips_adds_the_mirror_images_rotations_and_its_banks_hold_eight():
    """transforms-flips: copies 4..7 are the rotations of the image flipped left to right, the head
    has 8 outputs, transform sums the 8 log-likelihoods, and a views bank of 4 is refused."""
    torch.manual_seed(0)
    model = build_model("ae", (1, 8, 8), model_config(ssl="transforms-flips")).eval()
    images = u8(5)
    out = network_outputs(model, images)
    x = scale_images(images)
    copies = torch.cat([torch.rot90(v, k, (2, 3)) for v in (x, x.flip(3)) for k in range(4)])
    with torch.no_grad():
        codes = model.encoder(copies)
        logp = torch.log_softmax(model.ssl.head(codes).double(), dim=1).view(8, 5, 8)
    assert out["views"].shape == (8, 5, 128) and torch.allclose(out["views"], codes.view(8, 5, -1), atol=1e-6)
    assert torch.allclose(out["transform_nll"], -sum(logp[t, :, t] for t in range(8)), atol=1e-5)
    scorer = Scorer(model, {"views": torch.randn(8, 10, 128)})
    assert np.isfinite(scorer._score("views-lof", out)).all()
    assert scores._checked_bank(torch.randn(8, 10, 128), "views", model).shape == (8, 10, 128)
    with pytest.raises(ValueError, match="damaged"):  # a bank of the four rotations only (a saved state)
        scores._checked_bank(torch.randn(4, 10, 128), "views", model)


def test_the_recommended_score_is_the_first_best_one_a_network_has():
    assert recommended(["recon", "latent-knn", "fused", "fused-lof"]) == "fused-lof"
    assert recommended(["recon", "fused-lof", "fused-hidden"]) == "fused-hidden"
    assert recommended(["recon", "fused-lof", "fused-ssl"]) == "fused-ssl"
    assert recommended(["knn"]) == "knn"
    assert set(scores.RECOMMENDED) <= set(FUSIONS) and all(m in SCORES for f in FUSIONS.values() for m in f[0])


@pytest.mark.parametrize("damage, message", [
    (lambda s: s["banks"].update(code=torch.full((5, 128), float("nan"))), "not finite"),
    (lambda s: s["banks"].update(code=torch.full((5, 128), 1e30)), "damaged"),
    (lambda s: s["banks"].update(code=torch.zeros(5, 7)), "damaged"),
    (lambda s: s["banks"].update(code="codes"), "not a tensor"),
    (lambda s: s["validation_stats"].update(recon=[0.0, 0.0]), "validation statistics"),
    (lambda s: s["validation_stats"].update(recon=[float("nan"), 1.0]), "validation statistics"),
    (lambda s: s["validation_stats"].update(recon=[1.0, 2.0, 3.0]), "validation statistics"),
    (lambda s: s["thresholds"].update(recon=float("nan")), "thresholds"),
    (lambda s: s["thresholds"].update(recon=None), "thresholds"),
    (lambda s: s.update(banks=torch.zeros(3)), "no banks"),
])
def test_a_damaged_state_is_refused(damage, message, small_banks):
    torch.manual_seed(0)
    model = build_model("cascade", (1, 8, 8), model_config()).eval()
    state = Scorer.fit(model, u8(50), u8(20, seed=1), seed=0, percentile=95.0).state()
    damage(state)
    with pytest.raises(ValueError, match=message):
        Scorer.from_state(model, state)
