"""Autoencoders. Every forward returns a dict with at least

    "recon":  the reconstruction, shape of the input
    "loss":   the scalar training minimises
    "rec_loss": the reconstruction MSE (mean over pixels and batch)
    "latent": the encoder's output (B x D), before any memory
    "memory": one dict per memory stage (see models/memory.py), empty for models without memory

and, for a model with a self-supervised task (models/ssl.py), "ssl": the task's outputs (its
loss is in "loss" already); so one training loop serves every model.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def encode(encoder, ssl, x):
    """(the code of x, the self-supervised task's outputs or None): with a task, every copy of x
    it makes goes through the encoder in one batch, and copy 0 is x itself."""
    if ssl is None:
        return encoder(x), None
    codes = encoder(ssl.views(x))
    return codes[: len(x)], ssl(codes, len(x))


class MemoryAutoencoder(nn.Module):
    """x -> encoder -> h -> memory -> h* -> decoder -> x_hat, trained on plain reconstruction MSE
    (plus whatever term the memory itself adds, e.g. MemAE's entropy loss).

    memory=None gives the plain autoencoder with the same backbone; ssl (models/ssl.py) adds a
    self-supervised task on the encoder's code.
    """

    def __init__(self, encoder, decoder, memory=None, ssl=None):
        super().__init__()
        self.encoder, self.memory, self.decoder, self.ssl = encoder, memory, decoder, ssl

    def forward(self, x):
        latent, task = encode(self.encoder, self.ssl, x)
        h, addressed = (latent, []) if self.memory is None else self.memory(latent)
        recon = self.decoder(h)
        rec_loss = F.mse_loss(recon, x)
        loss = rec_loss + sum(info["loss"] for info in addressed if "loss" in info)
        out = {"recon": recon, "loss": loss, "rec_loss": rec_loss, "latent": latent, "memory": addressed}
        if task is not None:
            out.update(loss=loss + task["loss"], ssl=task)
        return out


class VAE(nn.Module):
    """Variational autoencoder (Kingma & Welling): a Gaussian latent from the encoder's features,
    the reparameterisation trick in training, the mean in evaluation.

    loss = MSE(x_hat, x) + kl_weight * KL(q(z|x) || N(0, I)) / (C*H*W)
    (both terms per pixel, so kl_weight = 1 is a Gaussian decoder of variance 1/2).
    The anomaly score, as for every model, is the reconstruction error.
    """

    def __init__(self, encoder, decoder, feature_dim, latent_dim, kl_weight=1.0, ssl=None):
        super().__init__()
        self.encoder, self.decoder, self.ssl = encoder, decoder, ssl
        self.to_mean = nn.Linear(feature_dim, latent_dim)
        self.to_logvar = nn.Linear(feature_dim, latent_dim)
        self.kl_weight = kl_weight

    def forward(self, x):
        features, task = encode(self.encoder, self.ssl, x)
        mean, logvar = self.to_mean(features), self.to_logvar(features).clamp(-30.0, 20.0)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training else mean
        recon = self.decoder(z)
        rec_loss = F.mse_loss(recon, x)
        kl = -0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).sum(dim=1).mean()
        loss = rec_loss + self.kl_weight * kl / x[0].numel()
        out = {"recon": recon, "loss": loss, "rec_loss": rec_loss, "kl": kl, "latent": features, "memory": []}
        if task is not None:
            out.update(loss=loss + task["loss"], ssl=task)
        return out

    def extra_repr(self):
        return f"kl_weight={self.kl_weight}"
