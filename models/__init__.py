"""Models of cascade-memory and the named presets that build them from a dataset's shape.

    from models import build_model
    model = build_model("cascade", input_shape=(1, 28, 28))
"""
from models.autoencoder import VAE, MemoryAutoencoder
from models.backbones import BACKBONES
from models.memory import CascadeMemory, MemAEMemory, MemoryUnit

PRESETS = {
    # name: (backbone, memory, description)
    "cascade": ("conv", "cascade", "conv backbone + cascade memory, paper behaviour (the main model)"),
    "cascade-mlp": ("mlp", "cascade", "released MLP backbone + cascade memory, paper behaviour"),
    "cascade-released": ("mlp", "cascade-released", "released MLP + released memory quirks (closest to the authors' code)"),
    "memae": ("conv", "memae", "conv backbone + MemAE memory (hard shrinkage, entropy loss)"),
    "ae": ("conv", None, "conv backbone, no memory (plain autoencoder)"),
    "ae-mlp": ("mlp", None, "released MLP backbone, no memory"),
    "vae": ("conv", "vae", "conv backbone, variational autoencoder"),
}

# The paper's cascade (PAPER.md): prior memory 50 slots, k = 15, forget rate 0.1;
# posterior memory 1000 slots, k = 5, forget rate 0.5.
PAPER_STAGES = {"n_slots": (50, 1000), "top_k": (15, 5), "forget_rate": (0.1, 0.5)}


def build_model(preset, input_shape, *, latent_dim=128, channels=(32, 64, 128), n_slots=PAPER_STAGES["n_slots"],
                top_k=PAPER_STAGES["top_k"], forget_rate=PAPER_STAGES["forget_rate"], threshold=0.0,
                connector="leaky_relu", memae_slots=100, memae_shrink_threshold=None,
                memae_entropy_weight=0.0002, kl_weight=1.0):
    """Build a preset for inputs of shape (C, H, W). Raises ValueError on an unknown preset or
    inconsistent settings. n_slots / top_k / forget_rate are per-stage lists for the cascade
    presets (their length is the number of stages; empty = no memory)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset '{preset}'; valid: {', '.join(PRESETS)}")
    backbone, memory_kind, _ = PRESETS[preset]
    input_shape = tuple(int(s) for s in input_shape)
    encoder_cls, decoder_cls = BACKBONES[backbone]
    kwargs = {"channels": tuple(channels)} if backbone == "conv" else {}
    encoder = encoder_cls(input_shape, latent_dim=latent_dim, **kwargs)
    decoder = decoder_cls(input_shape, latent_dim=latent_dim, **kwargs)
    if memory_kind == "vae":
        return VAE(encoder, decoder, latent_dim, latent_dim, kl_weight)
    memory = None
    if memory_kind in ("cascade", "cascade-released"):
        if not len(n_slots) == len(top_k) == len(forget_rate):
            raise ValueError(f"n_slots {list(n_slots)}, top_k {list(top_k)} and forget_rate {list(forget_rate)} "
                             f"must list one value per memory stage (same lengths)")
        stages = [{"n_slots": n, "top_k": k, "forget_rate": r} for n, k, r in zip(n_slots, top_k, forget_rate)]
        behaviour = "released" if memory_kind == "cascade-released" else "paper"
        memory = CascadeMemory(latent_dim, stages, connector, threshold, behaviour) if stages else None
    elif memory_kind == "memae":
        memory = MemAEMemory(memae_slots, latent_dim, memae_shrink_threshold, memae_entropy_weight)
    return MemoryAutoencoder(encoder, decoder, memory)


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


__all__ = ["PRESETS", "PAPER_STAGES", "build_model", "count_parameters", "MemoryUnit", "CascadeMemory",
           "MemAEMemory", "MemoryAutoencoder", "VAE"]
