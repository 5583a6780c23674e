"""Models of cascade-memory and the named presets that build them from a dataset's shape.

    from models import ModelConfig, build_model
    from tool.constants import main_defaults          # main.py's constants, the paper's settings
    model = build_model("cascade", (1, 28, 28), ModelConfig.from_settings(main_defaults()))
"""
from dataclasses import dataclass, fields

from models.autoencoder import VAE, MemoryAutoencoder
from models.backbones import BACKBONES
from models.memory import CascadeMemory, MemAEMemory, MemoryUnit
from models.ssl import AUGMENTED_KINDS, SSL_KINDS, SelfSupervision

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


@dataclass(frozen=True)
class ModelConfig:
    """The model settings, named as main.py's constants (LATENT_DIM -> latent_dim, ...), which
    hold their defaults and say what each one is. n_slots / top_k / forget_rate list one value
    per memory stage of the cascade presets (empty lists = no memory)."""
    latent_dim: int
    channels: tuple
    n_slots: tuple
    top_k: tuple
    forget_rate: tuple
    addressing_threshold: float
    connector: str
    memae_slots: int
    memae_shrink_threshold: float  # None = 1 / memae_slots
    memae_entropy_weight: float
    kl_weight: float
    ssl: str  # None, or a self-supervised task of models/ssl.py: "transforms" | "transforms-flips" | "contrastive"
    ssl_weight: float
    ssl_temperature: float
    ssl_augment: bool  # the transformation tasks' copies of a training image are made from a random view of it

    @classmethod
    def from_settings(cls, settings, **overrides):
        """The model settings out of a mapping of every setting (main.DEFAULTS, a run's config)."""
        return cls(**{f.name: overrides.get(f.name, settings[f.name]) for f in fields(cls)})


def build_model(preset, input_shape, config):
    """Build `preset` (PRESETS) for inputs of shape (C, H, W) with the settings of `config` (a
    ModelConfig). Raises ValueError on an unknown preset or inconsistent settings."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset '{preset}'; valid: {', '.join(PRESETS)}")
    backbone, memory_kind, _ = PRESETS[preset]
    input_shape = tuple(int(s) for s in input_shape)
    encoder_cls, decoder_cls = BACKBONES[backbone]
    kwargs = {"channels": tuple(config.channels)} if backbone == "conv" else {}
    encoder = encoder_cls(input_shape, latent_dim=config.latent_dim, **kwargs)
    decoder = decoder_cls(input_shape, latent_dim=config.latent_dim, **kwargs)
    if config.ssl is None and config.ssl_augment:
        raise ValueError(f"ssl_augment makes the copies of a transformation task from random views, and ssl is None: "
                         f"give ssl {' or '.join(map(repr, AUGMENTED_KINDS))}, or ssl_augment False")
    ssl = (SelfSupervision(config.ssl, config.latent_dim, input_shape, config.ssl_weight, config.ssl_temperature,
                           augment=config.ssl_augment)
           if config.ssl is not None else None)
    if memory_kind == "vae":
        return VAE(encoder, decoder, config.latent_dim, config.latent_dim, config.kl_weight, ssl)
    memory = None
    if memory_kind in ("cascade", "cascade-released"):
        n_slots, top_k, forget_rate = config.n_slots, config.top_k, config.forget_rate
        if not len(n_slots) == len(top_k) == len(forget_rate):
            raise ValueError(f"n_slots {list(n_slots)}, top_k {list(top_k)} and forget_rate {list(forget_rate)} "
                             f"must list one value per memory stage (same lengths)")
        stages = [{"n_slots": n, "top_k": k, "forget_rate": r} for n, k, r in zip(n_slots, top_k, forget_rate)]
        behaviour = "released" if memory_kind == "cascade-released" else "paper"
        memory = (CascadeMemory(config.latent_dim, stages, config.connector, config.addressing_threshold, behaviour)
                  if stages else None)
    elif memory_kind == "memae":
        memory = MemAEMemory(config.memae_slots, config.latent_dim, config.memae_shrink_threshold,
                             config.memae_entropy_weight)
    return MemoryAutoencoder(encoder, decoder, memory, ssl)


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


__all__ = ["PRESETS", "SSL_KINDS", "AUGMENTED_KINDS", "ModelConfig", "build_model", "count_parameters", "MemoryUnit",
           "CascadeMemory", "MemAEMemory", "MemoryAutoencoder", "VAE", "SelfSupervision"]
