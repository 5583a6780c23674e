"""Autoencoders. Every forward returns a dict with at least

    "recon":  the reconstruction, shape of the input
    "loss":   the scalar training minimises
    "rec_loss": the reconstruction MSE (mean over pixels and batch)
    "latent": the encoder's output (B x D), before any memory
    "memory": one dict per memory stage (see models/memory.py), empty for models without memory

so one training loop serves every model.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class MemoryAutoencoder(nn.Module):
    """x -> encoder -> h -> memory -> h* -> decoder -> x_hat, trained on plain reconstruction MSE
    (plus whatever term the memory itself adds, e.g. MemAE's entropy loss).

    memory=None gives the plain autoencoder with the same backbone.
    """

    def __init__(self, encoder, decoder, memory=None):
        super().__init__()
        self.encoder, self.memory, self.decoder = encoder, memory, decoder

    def forward(self, x):
        latent = h = self.encoder(x)
        addressed = []
        if self.memory is not None:
            h, addressed = self.memory(h)
        recon = self.decoder(h)
        rec_loss = F.mse_loss(recon, x)
        loss = rec_loss + sum(info["loss"] for info in addressed if "loss" in info)
        return {"recon": recon, "loss": loss, "rec_loss": rec_loss, "latent": latent, "memory": addressed}


class VAE(nn.Module):
    """Variational autoencoder (Kingma & Welling): a Gaussian latent from the encoder's features,
    the reparameterisation trick in training, the mean in evaluation.

    loss = MSE(x_hat, x) + kl_weight * KL(q(z|x) || N(0, I)) / (C*H*W)
    (both terms per pixel, so kl_weight = 1 is a Gaussian decoder of variance 1/2).
    The anomaly score, as for every model, is the reconstruction error.
    """

    def __init__(self, encoder, decoder, feature_dim, latent_dim, kl_weight=1.0):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.to_mean = nn.Linear(feature_dim, latent_dim)
        self.to_logvar = nn.Linear(feature_dim, latent_dim)
        self.kl_weight = kl_weight

    def forward(self, x):
        features = self.encoder(x)
        mean, logvar = self.to_mean(features), self.to_logvar(features).clamp(-30.0, 20.0)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training else mean
        recon = self.decoder(z)
        rec_loss = F.mse_loss(recon, x)
        kl = -0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).sum(dim=1).mean()
        loss = rec_loss + self.kl_weight * kl / x[0].numel()
        return {"recon": recon, "loss": loss, "rec_loss": rec_loss, "kl": kl, "latent": features, "memory": []}

    def extra_repr(self):
        return f"kl_weight={self.kl_weight}"
