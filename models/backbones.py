"""Encoders and decoders. The input shape (C, H, W) always comes from the data.

Every encoder maps (B, C, H, W) to a flat latent vector (B, latent_dim); its decoder maps it back.
"""
import math

import torch.nn as nn


def _block(layer, features, norm):
    return [layer, norm(features), nn.LeakyReLU()]


class MLPEncoder(nn.Module):
    """The released backbone: C*H*W -> 512 -> 256 -> 128, each Linear + BatchNorm1d + LeakyReLU."""

    def __init__(self, input_shape, latent_dim, hidden=(512, 256)):
        super().__init__()
        sizes = [math.prod(input_shape), *hidden, latent_dim]
        layers = [nn.Flatten()]
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += _block(nn.Linear(n_in, n_out), n_out, nn.BatchNorm1d)
        self.net = nn.Sequential(*layers)
        self.latent_dim, self.hidden_width = latent_dim, sizes[1]  # the code's width; hidden_layer's features

    def forward(self, x):
        return self.net(x)

    def hidden_layer(self):
        """The module whose output is the first hidden layer (512 features after Linear, BatchNorm
        and LeakyReLU): the features hidden-knn compares."""
        return self.net[3]


class MLPDecoder(nn.Module):
    """Mirror of MLPEncoder: 128 -> 256 -> 512 -> C*H*W; the last layer is Linear + BatchNorm1d,
    with no activation, as released."""

    def __init__(self, input_shape, latent_dim, hidden=(512, 256)):
        super().__init__()
        self.input_shape = tuple(input_shape)
        sizes = [latent_dim, *reversed(hidden)]
        layers = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += _block(nn.Linear(n_in, n_out), n_out, nn.BatchNorm1d)
        n_out = math.prod(input_shape)
        layers += [nn.Linear(sizes[-1], n_out), nn.BatchNorm1d(n_out)]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z).view(-1, *self.input_shape)


def conv_plan(input_shape, channels):
    """Spatial sizes of the strided convolutions: halve (kernel 4, stride 2, padding 1) while the
    smaller side is at least 8, at most len(channels) times. 28 -> 14 -> 7, 32 -> 16 -> 8 -> 4,
    8 -> 4."""
    sizes = [tuple(input_shape[1:])]
    while len(sizes) <= len(channels) and min(sizes[-1]) >= 8:
        sizes.append(tuple(s // 2 for s in sizes[-1]))
    return sizes


class ConvEncoder(nn.Module):
    """Strided convolutions (kernel 4, stride 2) with BatchNorm2d + LeakyReLU, then a Linear layer
    with BatchNorm1d + LeakyReLU down to the flat latent vector."""

    def __init__(self, input_shape, channels, latent_dim):
        super().__init__()
        sizes = conv_plan(input_shape, channels)
        chans = [input_shape[0], *channels[: len(sizes) - 1]]
        layers = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += _block(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False), c_out, nn.BatchNorm2d)
        flat = chans[-1] * math.prod(sizes[-1])
        layers += [nn.Flatten(), *_block(nn.Linear(flat, latent_dim, bias=False), latent_dim, nn.BatchNorm1d)]
        self.net = nn.Sequential(*layers)
        self.latent_dim = latent_dim

    def forward(self, x):
        return self.net(x)


class ConvDecoder(nn.Module):
    """Mirror of ConvEncoder: Linear to the smallest feature map, transposed convolutions doubling
    the size (output_padding restores odd sizes), the last one to C channels with no norm or
    activation (with no convolution at all, the Linear layer is that last layer)."""

    def __init__(self, input_shape, channels, latent_dim):
        super().__init__()
        sizes = conv_plan(input_shape, channels)
        chans = [input_shape[0], *channels[: len(sizes) - 1]]
        self.start = (chans[-1], *sizes[-1])
        steps = list(zip(reversed(chans[1:]), reversed(chans[:-1]), reversed(sizes[:-1]), reversed(sizes[1:])))
        linear = nn.Linear(latent_dim, math.prod(self.start), bias=not steps)
        # no strided convolution (input under 8 x 8, or channels=()): the Linear layer is the last one
        layers = [*(_block(linear, math.prod(self.start), nn.BatchNorm1d) if steps else [linear]),
                  nn.Unflatten(1, self.start)]
        for i, (c_in, c_out, size_out, size_in) in enumerate(steps):
            pad = tuple(o - 2 * s for o, s in zip(size_out, size_in))
            last = i == len(steps) - 1
            conv = nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, output_padding=pad, bias=last)
            layers += [conv] if last else _block(conv, c_out, nn.BatchNorm2d)
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)


BACKBONES = {"conv": (ConvEncoder, ConvDecoder), "mlp": (MLPEncoder, MLPDecoder)}
