"""Self-supervised tasks on the encoder's code, learned from the normal training images alone.

The reconstruction term and the memory stay as they are; a task adds a term to the loss that
makes the code carry what a reconstruction does not need: the global shape and orientation of an
image, which is what tells a shirt from the T-shirts and coats it is reconstructed like.

    "transforms"   transformation prediction (GEOM, Golan and El-Yaniv 2018; RotNet): each image is
                   rotated by 0, 90, 180 and 270 degrees, and a linear head on the code of each
                   copy predicts which rotation it is. Objects of a kind have a canonical
                   orientation, so the head must learn their shape.
    "transforms-flips"  the same with the mirror image's rotations too (K = 8, the dihedral group): a
                   harder task, since the head must also tell an item from its mirror image.
    "contrastive"  contrastive learning with shifted instances (CSI, Tack et al. 2020): every rotated
                   copy and a random view of it (shift, scale, horizontal flip) are pulled together
                   by a projection head with NT-Xent, every other copy (other images, and the
                   other rotations of the same image) pushed apart, plus the rotation head above.
                   (CSI pairs two random views; one of them is the copy itself here, which saves
                   a third of the encoder's work.)

With `augment` (SSL_AUGMENT, the transformation tasks), the task's copies of a training image are
made from a random view of it (scale and shift, never a flip, which is one of the task's answers),
so the head cannot learn the training images' own cues; the memory and the decoder still see the
image itself (copy 0, one more copy through the encoder). Evaluation is unchanged.

Every copy goes through the encoder in one batch (K x B images, copy 0 the image itself); the
memory and the decoder see the image's own code only. In evaluation the copies are the task's K
transformations (the rotations, and those of the mirror image for "transforms-flips"), and the
task returns the code of each ("views", K x B x D) and how poorly the head recognises them
("transform_nll", B: -sum_t log p(t | transformed by t)), which tool/scores.py turns into anomaly
scores.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

SSL_KINDS = ("transforms", "transforms-flips", "contrastive")
AUGMENTED_KINDS = ("transforms", "transforms-flips")  # the tasks SSL_AUGMENT applies to (contrastive: views of its own)
N_ROTATIONS = 4
N_TRANSFORMS = {"transforms": N_ROTATIONS, "transforms-flips": 2 * N_ROTATIONS, "contrastive": N_ROTATIONS}


def rotations(x):
    """The K = 4 rotations of a batch (B x C x H x W, square), rotation-major: (K*B) x C x H x W."""
    return torch.cat([torch.rot90(x, k, (2, 3)) for k in range(N_ROTATIONS)])


def transformed(x, k):
    """The first k transformations of a batch, transformation-major ((k*B) x C x H x W): the 4
    rotations, then (k = 8) the 4 rotations of the mirror image (flipped left to right)."""
    if k == N_ROTATIONS:
        return rotations(x)
    if k == 2 * N_ROTATIONS:
        return torch.cat([rotations(x), rotations(torch.flip(x, (3,)))])
    raise ValueError(f"no set of {k} transformations; there are {N_ROTATIONS} and {2 * N_ROTATIONS}")


def transform_names(k):
    """How the tables name the k transformations: '0 deg' ... '270 deg', then 'flip 0 deg' ..."""
    return [("flip " if t >= N_ROTATIONS else "") + f"{90 * (t % N_ROTATIONS)} deg" for t in range(k)]


def augment(x, flip=True):
    """A random view of each image (B x C x H x W): horizontal flip with probability 1/2 (only if
    `flip`), scale in [0.85, 1.15], shift of up to 1/8 of the side, one affine resampling (bilinear,
    zeros outside). Drawn from torch's default generator on the images' device (seeded, saved in
    checkpoints)."""
    b = len(x)
    params = torch.rand(b, 4, device=x.device)
    flip = torch.where(params[:, 0] < 0.5, -1.0, 1.0) if flip else torch.ones(b, device=x.device)
    scale = 1.0 / (0.85 + 0.3 * params[:, 1])
    shift = (params[:, 2:] - 0.5) * 0.5  # in [-1, 1] grid units: 1/8 of the side each way at most
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = scale * flip
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)


def nll(logits, targets):
    """Cross-entropy per row, written with gather (NLLLoss has no deterministic CUDA kernel)."""
    return -F.log_softmax(logits.float(), dim=1).gather(1, targets.unsqueeze(1)).squeeze(1)


class SelfSupervision(nn.Module):
    """One self-supervised task (SSL_KINDS) on codes of width `latent_dim`, weighted by `weight` in
    the loss. `temperature` is NT-Xent's (contrastive only); `augment`: the transformation tasks'
    copies of a training image are made from a random view of it (the module's docstring)."""

    def __init__(self, kind, latent_dim, input_shape, weight=1.0, temperature=0.5, projection_dim=64, augment=False):
        super().__init__()
        if kind not in SSL_KINDS:
            raise ValueError(f"unknown self-supervised task '{kind}'; valid: {', '.join(SSL_KINDS)}")
        if input_shape[1] != input_shape[2]:
            raise ValueError(f"the self-supervised tasks rotate images by 90 degrees, which needs square images; "
                             f"these are {input_shape[1]} x {input_shape[2]} (prepare them with --size S S)")
        if not (math.isfinite(weight) and weight > 0 and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"ssl_weight and ssl_temperature must be positive numbers, got {weight}, {temperature}")
        if augment and kind not in AUGMENTED_KINDS:
            raise ValueError("ssl_augment is for the transformation tasks; the contrastive task draws random views of "
                             "its own")
        self.kind, self.weight, self.temperature, self.augment = kind, weight, temperature, bool(augment)
        self.n_transforms = N_TRANSFORMS[kind]
        self.head = nn.Linear(latent_dim, self.n_transforms)  # which transformation: K logits per code
        self.projection = (nn.Sequential(nn.Linear(latent_dim, latent_dim), nn.ReLU(), nn.Linear(latent_dim, projection_dim))
                           if kind == "contrastive" else None)

    @property
    def training_copies(self):
        """How many copies of each image views() gives the encoder in training."""
        return self.n_transforms * (2 if self.kind == "contrastive" else 1) + (1 if self.augment else 0)

    def _augmenting(self):
        return self.augment and self.training

    def views(self, x):
        """The copies the encoder sees: the K transformations of each image, and in training for
        "contrastive" a random view of each rotation after them ((2*K*B) x C x H x W); with
        `augment`, in training, x itself and then the K transformations of a random view of it
        ((1+K)*B). Copy 0 is always `x` itself."""
        if self._augmenting():
            return torch.cat([x, transformed(augment(x, flip=False), self.n_transforms)])
        rotated = transformed(x, self.n_transforms)
        if self.kind == "contrastive" and self.training:
            return torch.cat([rotated, augment(rotated)])
        return rotated

    def forward(self, codes, batch):
        """The task's loss and its evaluation outputs from the codes of views(x) (batch = B)."""
        k = self.n_transforms
        start = batch if self._augmenting() else 0  # the head's copies follow x itself
        plain = codes[start: start + k * batch]
        targets = torch.arange(k, device=codes.device).repeat_interleave(batch)
        per_image = nll(self.head(plain), targets)  # K*B
        loss = per_image.mean()
        if self.projection is not None and self.training:
            loss = loss + self._contrastive(codes)
        return {"loss": self.weight * loss, "task_loss": loss.detach(),
                "views": plain.detach().view(k, batch, -1),
                "transform_nll": per_image.detach().view(k, batch).sum(dim=0)}

    def _contrastive(self, codes):
        """NT-Xent over the codes of every rotated copy and of its random view (2 * K*B rows, in
        two halves, as views() made them): each row's positive is its twin in the other half, every
        other row a negative, the other rotations of the same image among them."""
        z = F.normalize(self.projection(codes.float()), dim=1)
        n = len(z) // 2
        similarity = z @ z.t() / self.temperature
        similarity = similarity.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
        twin = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
        return nll(similarity, twin).mean()

    def extra_repr(self):
        return (f"kind={self.kind}, transforms={self.n_transforms}, weight={self.weight}, temperature={self.temperature}"
                + (", augment=True" if self.augment else ""))
