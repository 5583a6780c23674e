"""Tests of models/__init__.py, backbones.py, autoencoder.py: presets, shapes, gradients, settings, training."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_valid_weights, chosen, latents, model_config, seeded_forward
from main import DEFAULTS
from models import PRESETS, VAE, CascadeMemory, MemoryAutoencoder, build_model, count_parameters

PAPER_STAGES = {key: DEFAULTS[key] for key in ("n_slots", "top_k", "forget_rate")}  # main.py's defaults: the paper's

CASCADE_PRESETS = [name for name, (_, memory, _) in PRESETS.items() if memory in ("cascade", "cascade-released")]
MEMORY_PRESETS = [*CASCADE_PRESETS, "memae"]
RANDOM_PRESETS = [*CASCADE_PRESETS, "vae"]  # presets whose training forward draws random numbers
PLAIN_AE = {"cascade": "ae", "cascade-mlp": "ae-mlp", "cascade-released": "ae-mlp", "memae": "ae"}
SHAPES = [(1, 28, 28), (3, 32, 32), (1, 8, 8)]
ODD_SHAPE = (1, 27, 29)  # odd sides: the conv decoder needs output_padding to give them back
TINY = (1, 8, 8)


def images(n, shape=TINY, seed=0):
    """n random images in [-1, 1], the project's pixel range."""
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


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
# Train / eval, gradients
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


# ---------------------------------------------------------------------------------------------
# Parameter counts
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# The self-supervised task's augmented copies (SSL_AUGMENT)

@pytest.mark.parametrize("kind, k", [("transforms", 4), ("transforms-flips", 8)])
def test_ssl_augment_makes_the_task_copies_from_a_random_view_and_keeps_the_image_for_the_decoder(kind, k):
    """In training: x itself, then the K transformations of one random view of it (never mirrored),
    and the head is scored on those K copies only; the reconstruction is that of x. In evaluation
    the copies are the K transformations of x, as without the option."""
    from models.ssl import augment, transformed

    x = images(6)
    model = build_model("cascade", TINY, model_config(ssl=kind, ssl_augment=True)).train()
    torch.manual_seed(1)
    copies = model.ssl.views(x)
    torch.manual_seed(1)
    expected = torch.cat([x, transformed(augment(x, flip=False), k)])
    assert copies.shape == ((1 + k) * 6, *TINY) and model.ssl.training_copies == 1 + k
    assert torch.equal(copies, expected) and torch.equal(copies[:6], x)
    assert not torch.allclose(copies[6:12], x)  # the head's identity copy is a view, not x
    codes = torch.randn(len(copies), DEFAULTS["latent_dim"])
    task = model.ssl(codes, 6)
    targets = torch.arange(k).repeat_interleave(6)
    head = F.cross_entropy(model.ssl.head(codes[6:]), targets)
    assert task["loss"].item() == pytest.approx(head.item(), rel=1e-5)  # x's own code is not the head's
    out = build_model("cascade", TINY, model_config(ssl=kind, ssl_augment=True)).train()(x)
    assert out["latent"].shape == (6, DEFAULTS["latent_dim"]) and out["recon"].shape == x.shape
    model.eval()
    assert torch.equal(model.ssl.views(x), transformed(x, k))


def test_augment_without_flip_never_mirrors():
    """augment(x, flip=False) draws the same scale and shift as augment(x) from the same seed and
    never flips: it equals augment(x) on the images whose draw does not flip them, and differs on
    those it does."""
    from models.ssl import augment

    x = images(64)
    torch.manual_seed(0)
    views = augment(x, flip=False)
    torch.manual_seed(0)
    params = torch.rand(64, 4)
    torch.manual_seed(0)
    mirrored_somewhere = augment(x, flip=True)
    flipped = params[:, 0] < 0.5
    assert flipped.any() and not torch.allclose(views[flipped], mirrored_somewhere[flipped])
    assert torch.allclose(views[~flipped], mirrored_somewhere[~flipped])


def test_ssl_augment_is_for_the_transformation_tasks_only():
    with pytest.raises(ValueError, match="transformation tasks"):
        build_model("cascade", TINY, model_config(ssl="contrastive", ssl_augment=True))
    with pytest.raises(ValueError, match="ssl is None"):
        build_model("cascade", TINY, model_config(ssl=None, ssl_augment=True))
