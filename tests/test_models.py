"""Tests of models/: shapes for every preset and backbone, the memory's addressing (weights,
forgetting, the paper and released behaviours, a slow reference implementation), gradients,
settings errors, parameter counts and a short training run.

Forgetting is made observable without touching the module API by replaying torch's generator:
after torch.manual_seed(s), a MemoryUnit in training draws its forgotten slots as
torch.randperm(n_slots)[:n_forget], so the same two calls after the same seed give the same set
(`replay_forgotten`; `test_replay_matches_the_module_draw` checks that this really holds).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import model_config
from main import DEFAULTS
from models import (PRESETS, VAE, CascadeMemory, MemAEMemory, MemoryAutoencoder, MemoryUnit, build_model,
                    count_parameters)

PAPER_STAGES = {key: DEFAULTS[key] for key in ("n_slots", "top_k", "forget_rate")}  # main.py's defaults: the paper's

BEHAVIOURS = ("paper", "released")
CASCADE_PRESETS = [name for name, (_, memory, _) in PRESETS.items() if memory in ("cascade", "cascade-released")]
MEMORY_PRESETS = [*CASCADE_PRESETS, "memae"]
RANDOM_PRESETS = [*CASCADE_PRESETS, "vae"]  # presets whose training forward draws random numbers
PLAIN_AE = {"cascade": "ae", "cascade-mlp": "ae-mlp", "cascade-released": "ae-mlp", "memae": "ae"}
SHAPES = [(1, 28, 28), (3, 32, 32), (1, 8, 8)]
ODD_SHAPE = (1, 27, 29)  # odd sides: the conv decoder needs output_padding to give them back
TINY = (1, 8, 8)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def images(n, shape=TINY, seed=0):
    """n random images in [-1, 1], the project's pixel range."""
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def latents(n, dim, seed=0, dtype=torch.float32):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def seeded_forward(module, x, seed):
    torch.manual_seed(seed)
    return module(x)


def replay_forgotten(seed, n_slots, n_forget):
    """The slots a MemoryUnit in training forgets on its first forward after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    return set(torch.randperm(n_slots)[:n_forget].tolist())


def chosen(info):
    """Per row, the set of slot indices the memory addressed."""
    return [set(row) for row in info["indices"].tolist()]


def addressing(info):
    """Per row, {slot index: weight}: the addressing independent of the order of the k columns."""
    return [dict(zip(i, w)) for i, w in zip(info["indices"].tolist(), info["weights"].tolist())]


def assert_addressing(actual, expected, tol=1e-12):
    assert len(actual) == len(expected)
    for row, (got, want) in enumerate(zip(actual, expected)):
        assert set(got) == set(want), f"row {row}: addressed slots {sorted(got)}, expected {sorted(want)}"
        for slot, weight in want.items():
            assert got[slot] == pytest.approx(weight, abs=tol), f"row {row}, slot {slot}"


def softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def unit_with_slots(slots, top_k, forget_rate=0.0, threshold=0.0, behaviour="paper"):
    """A float64 MemoryUnit whose slot matrix is `slots` (a list of rows)."""
    slots = torch.tensor(slots, dtype=torch.float64)
    unit = MemoryUnit(len(slots), slots.shape[1], top_k, forget_rate, threshold, behaviour).double()
    unit.slots.data.copy_(slots)
    return unit


def mix(slots, weights_by_slot):
    """sum_j w_j * M[index_j] for one row, from {index: weight}."""
    return sum(w * torch.as_tensor(slots[i], dtype=torch.float64) for i, w in weights_by_slot.items())


def assert_valid_weights(weights, top_k=None):
    """Finite, non-negative, each row sums to 1; with top_k, B x k (so at most k non-zero per row)."""
    assert torch.isfinite(weights).all()
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(len(weights), dtype=weights.dtype))
    if top_k is not None:
        assert weights.shape[1] == top_k
        assert ((weights > 0).sum(dim=1) <= top_k).all()


def reference_unit(h, slots, top_k, threshold, behaviour, forgotten=frozenset()):
    """The memory stage, steps 1-6 of docs/method.md, one row at a time in plain Python (float64).

    Returns per-row {slot index: weight} and the output rows (B x D)."""
    slots = slots.tolist()
    rows_addressing, outputs = [], []
    for row in h.tolist():
        # 1. cosine similarity to every slot
        sims = [sum(a * b for a, b in zip(row, m)) / (math.hypot(*row) * math.hypot(*m)) for m in slots]
        # 2. forgetting: closed (paper) or similarity 0 and still selectable (released)
        if behaviour == "paper":
            candidates = [i for i in range(len(slots)) if i not in forgotten]
        else:
            sims = [0.0 if i in forgotten else s for i, s in enumerate(sims)]
            candidates = list(range(len(slots)))
        # 3. top-k, most similar first
        picked = sorted(candidates, key=lambda i: sims[i], reverse=True)[:top_k]
        kept = [sims[i] for i in picked]
        # 4.-5. threshold and softmax
        if behaviour == "paper":
            passing = [s > threshold for s in kept]
            if not any(passing):  # fallback: weight 1 on the most similar slot
                passing = [j == 0 for j in range(len(kept))]
            exps = [math.exp(s) if ok else 0.0 for s, ok in zip(kept, passing)]
            weights = [e / sum(exps) for e in exps]
        else:
            weights = softmax([max(s, threshold) for s in kept])
        # 6. weighted sum of the picked slots
        rows_addressing.append(dict(zip(picked, weights)))
        outputs.append([sum(w * slots[i][d] for i, w in zip(picked, weights)) for d in range(len(row))])
    return rows_addressing, torch.tensor(outputs, dtype=torch.float64)


def n_memory_stages(preset):
    return len(PAPER_STAGES["n_slots"]) if preset in CASCADE_PRESETS else int(preset in MEMORY_PRESETS)


def shape_cases():
    """(preset, shape) for every preset and shape; the odd shape for the conv backbone only."""
    return [pytest.param(preset, shape, id=f"{preset}-{'x'.join(map(str, shape))}")
            for preset, (backbone, _, _) in PRESETS.items()
            for shape in [*SHAPES, *([ODD_SHAPE] if backbone == "conv" else [])]]


# ---------------------------------------------------------------------------------------------
# Shapes and the forward contract
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset, shape", shape_cases())
def test_reconstruction_has_the_input_shape(preset, shape):
    torch.manual_seed(0)
    model = build_model(preset, shape, model_config())
    for training, batch in ((True, 4), (False, 4), (False, 1)):
        model.train(training)
        x = images(batch, shape)
        out = model(x)
        assert out["recon"].shape == x.shape, f"training={training}, batch={batch}"
        assert out["loss"].shape == () and torch.isfinite(out["loss"])
        assert out["rec_loss"].shape == () and torch.isfinite(out["rec_loss"])
        torch.testing.assert_close(out["rec_loss"], F.mse_loss(out["recon"], x))
        assert len(out["memory"]) == n_memory_stages(preset)


@pytest.mark.parametrize("shape, channels", [
    *((shape, (32, 64, 128)) for shape in [*SHAPES, ODD_SHAPE]),
    ((1, 4, 4), (32, 64, 128)),  # too small for a strided convolution
    ((1, 28, 28), ()),  # no convolution asked for
], ids=lambda value: "x".join(map(str, value)) or "none")
def test_conv_decoder_ends_without_norm_or_activation(shape, channels):
    """The last layer of the conv decoder is affine (so it can reach every pixel value), also when
    there is no strided convolution at all."""
    model = build_model("ae", shape, model_config(channels=channels))
    assert model(images(2, shape))["recon"].shape == (2, *shape)
    *_, last = (m for m in model.decoder.net if not isinstance(m, torch.nn.Unflatten))
    assert isinstance(last, (torch.nn.ConvTranspose2d, torch.nn.Linear)), model.decoder
    assert last.bias is not None


# ---------------------------------------------------------------------------------------------
# Addressing weights
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("behaviour", BEHAVIOURS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("threshold", [0.0, 0.3])
def test_unit_weights_are_a_sparse_convex_mix(behaviour, training, threshold):
    n_slots, top_k = 30, 6
    unit = MemoryUnit(n_slots, 16, top_k, forget_rate=0.5, threshold=threshold, behaviour=behaviour).train(training)
    h = latents(64, 16)
    out, info = seeded_forward(unit, h, seed=1)
    assert out.shape == h.shape and torch.isfinite(out).all()
    assert info["n_slots"] == n_slots
    assert info["indices"].shape == (64, top_k) and info["indices"].dtype == torch.long
    assert ((info["indices"] >= 0) & (info["indices"] < n_slots)).all()
    assert all(len(row) == top_k for row in chosen(info)), "a slot is addressed twice in one row"
    assert_valid_weights(info["weights"], top_k)
    # the output is the mix of the addressed slots
    expected = torch.stack([mix(unit.slots.detach(), row) for row in addressing(info)]).float()
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("preset", MEMORY_PRESETS)
def test_model_weights_are_valid_in_every_stage(preset):
    torch.manual_seed(0)
    model = build_model(preset, TINY, model_config())
    if preset == "memae":
        stages = [(100, None)]  # MemAE addresses all its slots: no top-k
    else:
        stages = list(zip(PAPER_STAGES["n_slots"], PAPER_STAGES["top_k"]))
    for training in (True, False):
        out = model.train(training)(images(16))
        for info, (n_slots, top_k) in zip(out["memory"], stages, strict=True):
            assert info["n_slots"] == n_slots
            assert_valid_weights(info["weights"], top_k)


# ---------------------------------------------------------------------------------------------
# Forgetting (training only)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_replay_matches_the_module_draw(seed):
    """With top_k = the open slots, the paper unit addresses every open slot in every row, so the
    slots it never addresses are exactly the ones it forgot: they must be the replayed set."""
    n_slots, forget_rate, n_forget = 20, 0.3, 6
    unit = MemoryUnit(n_slots, 8, n_slots - n_forget, forget_rate).train()
    _, info = seeded_forward(unit, latents(16, 8), seed)
    forgotten = replay_forgotten(seed, n_slots, n_forget)
    assert len(forgotten) == n_forget
    for row in chosen(info):
        assert set(range(n_slots)) - row == forgotten


@pytest.mark.parametrize("n_slots, forget_rate, n_forget", [
    (100, 0.29, 29), (100, 0.57, 57), (10, 0.7, 7), (50, 0.1, 5), (1000, 0.5, 500), (7, 0.3, 2), (10, 0.05, 0)])
def test_exactly_floor_rate_times_n_slots_are_forgotten(n_slots, forget_rate, n_forget):
    """Released behaviour, top_k = every slot, every cosine with h well above 0: the weights are the
    softmax of the cosines with the forgotten slots' scores set to 0, so they show exactly which
    slots, and how many, were forgotten (one slot more or less changes a weight by e^0.8)."""
    unit = MemoryUnit(n_slots, 8, n_slots, forget_rate, behaviour="released").double().train()
    generator = torch.Generator().manual_seed(0)
    unit.slots.data = torch.rand(n_slots, 8, generator=generator, dtype=torch.float64) + 0.5
    h = torch.ones(2, 8, dtype=torch.float64)  # cosine with every slot > 0.8
    _, info = seeded_forward(unit, h, seed=3)
    forgotten = replay_forgotten(3, n_slots, n_forget)
    cosines = F.cosine_similarity(unit.slots.detach(), h[:1]).tolist()
    expected = dict(enumerate(softmax([0.0 if i in forgotten else c for i, c in enumerate(cosines)])))
    assert_addressing(addressing(info), [expected, expected])


def test_a_forgotten_slot_is_never_chosen_in_training():
    """Paper behaviour: over many passes the forgotten slots never appear among the addressed ones,
    while in eval mode the same inputs do address some of them (so the check is not vacuous)."""
    n_slots, top_k, forget_rate, n_forget = 20, 3, 0.5, 10
    unit = MemoryUnit(n_slots, 8, top_k, forget_rate)
    h = latents(32, 8)
    eval_chosen = set().union(*chosen(unit.eval()(h)[1]))
    unit.train()
    for seed in range(20):
        forgotten = replay_forgotten(seed, n_slots, n_forget)
        _, info = seeded_forward(unit, h, seed)
        assert not set().union(*chosen(info)) & forgotten, f"seed {seed}"
        assert eval_chosen & forgotten, f"seed {seed}: eval never addresses the forgotten slots"


def test_cascade_forgets_per_stage_in_order():
    """Each stage draws its own forgotten set, first stage first, and never addresses it."""
    cascade = CascadeMemory(8, [{"n_slots": 12, "top_k": 3, "forget_rate": 0.5},
                                {"n_slots": 30, "top_k": 4, "forget_rate": 0.4}]).train()
    for seed in range(5):
        torch.manual_seed(seed)
        forgotten = [set(torch.randperm(12)[:6].tolist()), set(torch.randperm(30)[:12].tolist())]
        _, stages = seeded_forward(cascade, latents(16, 8), seed)
        for info, closed in zip(stages, forgotten):
            assert not set().union(*chosen(info)) & closed


def test_same_seed_forgets_same_slots_other_seed_other_slots():
    n_slots, n_forget = 20, 10
    unit = MemoryUnit(n_slots, 8, n_slots - n_forget, 0.5).train()
    h = latents(4, 8)

    def forgotten(seed):
        return set(range(n_slots)) - chosen(seeded_forward(unit, h, seed)[1])[0]

    assert forgotten(0) == forgotten(0)
    assert forgotten(0) != forgotten(1)


# ---------------------------------------------------------------------------------------------
# Train / eval
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESETS)
def test_eval_is_deterministic_and_independent_of_the_rng(preset):
    torch.manual_seed(0)
    model = build_model(preset, TINY, model_config())
    x = images(8)
    model.eval()
    first, again, other_seed = (seeded_forward(model, x, s) for s in (0, 0, 1))
    for out in (again, other_seed):
        assert torch.equal(out["recon"], first["recon"])
        for info, info_first in zip(out["memory"], first["memory"]):
            assert torch.equal(info["indices"], info_first["indices"])
            assert torch.equal(info["weights"], info_first["weights"])
    model.train()  # in training the presets with forgetting (or sampling) do depend on the RNG
    depends_on_rng = not torch.equal(seeded_forward(model, x, 0)["recon"], seeded_forward(model, x, 1)["recon"])
    assert depends_on_rng == (preset in RANDOM_PRESETS)


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_unit_eval_switches_forgetting_off(behaviour):
    unit = MemoryUnit(20, 8, 5, 0.5, behaviour=behaviour)
    h = latents(16, 8)
    unit.train()
    assert not torch.equal(seeded_forward(unit, h, 0)[0], seeded_forward(unit, h, 1)[0])
    unit.eval()
    assert torch.equal(seeded_forward(unit, h, 0)[0], seeded_forward(unit, h, 1)[0])


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", MEMORY_PRESETS)
def test_gradients_reach_the_memory_slots_and_the_encoder(preset):
    torch.manual_seed(0)
    model = build_model(preset, TINY, model_config()).train()
    model(images(16))["loss"].backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(parameter.grad).all(), name
    slots = [p for name, p in model.memory.named_parameters() if name.endswith("slots")]
    assert len(slots) == (1 if preset == "memae" else len(PAPER_STAGES["n_slots"]))
    for p in [*slots, *model.encoder.parameters()]:
        assert p.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# Paper vs released behaviour on hand-built slots (h = (1, 0) in every case)
# ---------------------------------------------------------------------------------------------
COS_08 = [1.6, 1.2]  # cos 0.8 with h, norm 2: the output must mix the raw slot, not its unit vector
COS_06 = [0.6, -0.8]
COS_0 = [0.0, 1.0]  # exactly orthogonal: similarity exactly 0
COS_M06 = [-0.6, 0.8]
COS_M08 = [-0.8, -0.6]
COS_M1 = [-1.0, 0.0]

HAND_BUILT = {
    # name: (slots, top_k, threshold, expected paper {index: weight}, expected released {index: weight})
    "clipped-negative-still-weighted": (
        [COS_08, COS_06, COS_M06, COS_M1], 3, 0.0,
        dict(zip([0, 1, 2], [*softmax([0.8, 0.6]), 0.0])), dict(zip([0, 1, 2], softmax([0.8, 0.6, 0.0])))),
    "score-at-threshold": (
        [COS_08, COS_0, COS_M1], 2, 0.0, {0: 1.0, 1: 0.0}, dict(zip([0, 1], softmax([0.8, 0.0])))),
    "nothing-passes-fallback": (
        [COS_M06, COS_M08, COS_M1], 2, 0.0, {0: 1.0, 1: 0.0}, {0: 0.5, 1: 0.5}),
    "threshold-above-every-score": (
        [COS_08, COS_06, COS_M1], 2, 0.9, {0: 1.0, 1: 0.0}, {0: 0.5, 1: 0.5}),
}


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
@pytest.mark.parametrize("case", HAND_BUILT)
def test_hand_built_addressing(case, behaviour):
    slots, top_k, threshold, paper, released = HAND_BUILT[case]
    expected = paper if behaviour == "paper" else released
    unit = unit_with_slots(slots, top_k, threshold=threshold, behaviour=behaviour).eval()
    out, info = unit(torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    assert_addressing(addressing(info), [expected])
    torch.testing.assert_close(out[0], mix(slots, expected), rtol=0, atol=1e-12)


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
@pytest.mark.parametrize("seed", range(4))
def test_released_can_pick_a_forgotten_slot_paper_never(behaviour, seed):
    """4 slots, one forgotten per pass, top_k = 2. The forgotten slot is the most similar one (cos 1);
    of the open ones only one scores above 0 (cos 0.6), the others -0.8 and -1.
    Released: the forgotten slot scores 0 and is the second pick, with weight e^0 / Z.
    Paper: it is closed, the second pick is the cos -0.8 slot with weight exactly 0."""
    (forgotten,) = replay_forgotten(seed, 4, 1)
    open_slots = [[0.6, 0.8], [-0.8, 0.6], COS_M1]
    slots = open_slots[:forgotten] + [[1.0, 0.0]] + open_slots[forgotten:]
    first, second, _ = (i for i in range(4) if i != forgotten)  # the cos 0.6 and cos -0.8 slots
    expected = ({first: 1.0, second: 0.0} if behaviour == "paper"
                else dict(zip([first, forgotten], softmax([0.6, 0.0]))))
    unit = unit_with_slots(slots, 2, forget_rate=0.25, behaviour=behaviour)
    h = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    assert forgotten in chosen(unit.eval()(h)[1])[0]  # in eval it is the first pick
    out, info = seeded_forward(unit.train(), h, seed)
    assert_addressing(addressing(info), [expected])
    torch.testing.assert_close(out[0], mix(slots, expected), rtol=0, atol=1e-12)


def test_paper_fallback_on_a_zero_latent_is_finite():
    unit = MemoryUnit(10, 4, 3).eval()
    out, info = unit(torch.zeros(2, 4))  # every similarity is 0: nothing passes the threshold
    assert torch.isfinite(out).all()
    for row, (slots, weights) in enumerate(zip(info["indices"], info["weights"])):
        assert sorted(weights.tolist()) == [0.0, 0.0, 1.0]
        torch.testing.assert_close(out[row], unit.slots.detach()[slots[weights.argmax()]])


# ---------------------------------------------------------------------------------------------
# Reference implementation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.9])
@pytest.mark.parametrize("behaviour, forget_rate, n_forget", [
    ("paper", 0.25, 3),
    ("released", 0.1, 1),  # one forgotten slot: a single 0 score, so top-k has no ties to break
])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_unit_matches_the_slow_reference(behaviour, forget_rate, n_forget, threshold, training):
    """12 slots, k = 6, 32 random rows in float64: the vectorised unit agrees with the per-row loop."""
    n_slots, dim, top_k, batch, seed = 12, 5, 6, 32, 7
    torch.manual_seed(0)
    unit = MemoryUnit(n_slots, dim, top_k, forget_rate, threshold, behaviour).double().train(training)
    h = latents(batch, dim, seed=1, dtype=torch.float64)
    out, info = seeded_forward(unit, h, seed)
    forgotten = replay_forgotten(seed, n_slots, n_forget) if training else frozenset()
    expected_addressing, expected_out = reference_unit(h, unit.slots.detach(), top_k, threshold, behaviour,
                                                       forgotten)
    assert_addressing(addressing(info), expected_addressing)
    torch.testing.assert_close(out, expected_out, rtol=0, atol=1e-12)
    if training and behaviour == "released" and threshold == 0.0:  # the quirk is exercised here
        assert any(forgotten & row for row in chosen(info))


def test_cascade_is_units_and_connectors_in_sequence():
    stages = [{"n_slots": 10, "top_k": 3, "forget_rate": 0.1}, {"n_slots": 40, "top_k": 2, "forget_rate": 0.5}]
    torch.manual_seed(0)
    cascade = CascadeMemory(8, stages).eval()
    h = latents(6, 8)
    out, addressed = cascade(h)
    expected = h
    for unit, connector, info in zip(cascade.units, cascade.connectors, addressed):
        expected, expected_info = unit(expected)
        expected = connector(expected)
        assert torch.equal(info["indices"], expected_info["indices"])
    torch.testing.assert_close(out, expected)
    assert [u.n_slots for u in cascade.units] == [10, 40]


# ---------------------------------------------------------------------------------------------
# MemAE's memory
# ---------------------------------------------------------------------------------------------
def test_memae_weights_are_a_convex_mix_with_exact_zeros():
    memory = MemAEMemory(50, 16)
    h = latents(32, 16) * 5
    out, (info,) = memory(h)
    assert_valid_weights(info["weights"])
    assert (info["weights"] == 0).any(), "hard shrinkage should zero the small weights"
    assert info["indices"].shape == info["weights"].shape == (32, 50)
    torch.testing.assert_close(out, info["weights"] @ memory.slots)


@pytest.mark.parametrize("h, all_zero", [(latents(16, 8) * 20, False), (torch.zeros(4, 8), True)],
                         ids=["peaked", "every-weight-shrunk"])
def test_memae_entropy_is_finite_when_weights_are_exactly_zero(h, all_zero):
    """With 4 slots and h = 0 every weight is exactly 1/4 = the shrink threshold, so all are 0."""
    memory = MemAEMemory(4, 8, entropy_weight=1.0)
    h = h.clone().requires_grad_()
    out, (info,) = memory(h)
    assert (info["weights"] == 0).any()
    assert bool((info["weights"] == 0).all()) == all_zero
    assert torch.isfinite(info["loss"]) and torch.isfinite(out).all()
    (info["loss"] + out.sum()).backward()
    assert torch.isfinite(h.grad).all() and torch.isfinite(memory.slots.grad).all()


# ---------------------------------------------------------------------------------------------
# Ablations and settings
# ---------------------------------------------------------------------------------------------
def test_one_stage_is_the_single_memory_ablation():
    model = build_model("cascade", TINY, model_config(n_slots=[20], top_k=[4], forget_rate=[0.25]))
    assert isinstance(model.memory, CascadeMemory)
    assert len(model.memory.units) == len(model.memory.connectors) == 1
    (info,) = model.train()(images(8))["memory"]
    assert info["n_slots"] == 20 and info["weights"].shape == (8, 4)


@pytest.mark.parametrize("preset", CASCADE_PRESETS)
def test_zero_stages_is_the_plain_autoencoder(preset):
    torch.manual_seed(0)
    model = build_model(preset, TINY, model_config(n_slots=[], top_k=[], forget_rate=[]))
    torch.manual_seed(0)
    plain = build_model(PLAIN_AE[preset], TINY, model_config())
    assert isinstance(model, MemoryAutoencoder) and model.memory is None
    assert model.state_dict().keys() == plain.state_dict().keys()
    for key, value in plain.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    x = images(4)
    assert torch.equal(model.eval()(x)["recon"], plain.eval()(x)["recon"])
    h = latents(4, 8)
    out, addressed = CascadeMemory(8, []).eval()(h)
    assert torch.equal(out, h) and addressed == []


@pytest.mark.parametrize("preset, kwargs, message", [
    ("cascade", {"n_slots": [50, 1000], "top_k": [15], "forget_rate": [0.1, 0.5]}, "same lengths"),
    ("cascade", {"n_slots": [], "top_k": [15, 5], "forget_rate": [0.1, 0.5]}, "same lengths"),
    ("cascade", {"n_slots": [10], "top_k": [10], "forget_rate": [0.1]}, r"top_k=10 needs 1 <= top_k <= 9"),
    ("cascade", {"n_slots": [50, 1000], "top_k": [15, 501], "forget_rate": [0.1, 0.5]}, r"top_k=501"),
    ("cascade-released", {"n_slots": [10], "top_k": [11], "forget_rate": [0.1]}, r"top_k=11"),
    ("cascade", {"n_slots": [10], "top_k": [0], "forget_rate": [0.0]}, r"top_k=0"),
    ("cascade", {"n_slots": [10], "top_k": [3], "forget_rate": [1.0]}, "forget_rate"),
    ("cascade", {"n_slots": [10], "top_k": [3], "forget_rate": [1.5]}, "forget_rate"),
    ("cascade", {"n_slots": [10], "top_k": [3], "forget_rate": [-0.1]}, "forget_rate"),
    ("cascade", {"connector": "tanh"}, "connector"),
    ("memae", {"memae_slots": 0}, "at least one slot"),
    ("memae", {"memae_shrink_threshold": 1.0}, r"shrink threshold must lie in \[0, 1\)"),
    ("memae", {"memae_slots": 1}, r"shrink threshold .* got 1 \(n_slots=1\)"),  # default 1 / n_slots
])
def test_inconsistent_settings_raise(preset, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(preset, TINY, model_config(**kwargs))


def test_released_memory_may_address_every_slot():
    """Released behaviour: forgotten slots stay selectable, so top_k may equal n_slots."""
    model = build_model("cascade-released", TINY, model_config(n_slots=[10], top_k=[10], forget_rate=[0.1]))
    (info,) = model.train()(images(4))["memory"]
    assert all(row == set(range(10)) for row in chosen(info))


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown model preset 'cascad'") as error:
        build_model("cascad", TINY, model_config())
    assert all(name in str(error.value) for name in PRESETS)


def test_unknown_behaviour_raises():
    with pytest.raises(ValueError, match="valid: paper, released"):
        MemoryUnit(10, 4, 2, behaviour="authors")


# ---------------------------------------------------------------------------------------------
# Sizes and parameter counts
# ---------------------------------------------------------------------------------------------
def test_extra_repr_shows_the_real_sizes():
    text = str(build_model("cascade", (1, 28, 28), model_config()).memory)
    assert "n_slots=50, slot_dim=128, top_k=15, forget_rate=0.1 (5 slots per pass)" in text
    assert "n_slots=1000, slot_dim=128, top_k=5, forget_rate=0.5 (500 slots per pass)" in text
    assert "n_slots=100, slot_dim=128, shrink_threshold=0.01" in str(build_model("memae", (1, 28, 28), model_config()).memory)
    assert "n_slots=100, slot_dim=64, top_k=3, forget_rate=0.29 (29 slots per pass)" in repr(
        MemoryUnit(100, 64, 3, 0.29))


@pytest.mark.parametrize("preset", PRESETS)
def test_parameter_counts(preset):
    latent = 128
    model = build_model(preset, (1, 28, 28), model_config())
    assert count_parameters(model) > 0
    assert count_parameters(model) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    if preset in PLAIN_AE:
        plain = build_model(PLAIN_AE[preset], (1, 28, 28), model_config())
        if preset == "memae":
            memory_size = 100 * latent
        else:  # the slots of every stage, and a BatchNorm1d (weight + bias) after each
            memory_size = sum(n * latent + 2 * latent for n in PAPER_STAGES["n_slots"])
        assert count_parameters(model.memory) == memory_size
        assert count_parameters(model) == count_parameters(plain) + memory_size
    if preset == "vae":
        assert isinstance(model, VAE)
        assert count_parameters(model) == count_parameters(build_model("ae", (1, 28, 28), model_config())) + 2 * (latent + 1) * latent


# ---------------------------------------------------------------------------------------------
# A short training run
# ---------------------------------------------------------------------------------------------
def prototype_images(n=64, n_prototypes=4, seed=0):
    """n noisy copies of a few random 1 x 8 x 8 prototypes: something an autoencoder can learn fast."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(n_prototypes, *TINY, generator=generator) * 2 - 1
    labels = torch.randint(0, n_prototypes, (n,), generator=generator)
    return (prototypes[labels] + 0.1 * torch.randn(n, *TINY, generator=generator)).clamp(-1, 1)


@pytest.mark.parametrize("preset", PRESETS)
def test_short_training_lowers_the_loss(preset):
    """30 full-batch Adam steps (lr 1e-3, the released setting): the training loss at least halves.
    (The eval-mode loss is not asserted: after 30 steps BatchNorm's running statistics still lag.)"""
    x = prototype_images()
    torch.manual_seed(0)
    model = build_model(preset, TINY, model_config()).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = model(x)["loss"]
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < 0.5 * losses[0], losses
