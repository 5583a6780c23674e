"""Memory modules: one cascade memory unit, the N-stage cascade, and MemAE's memory.

Every memory maps a batch of latent vectors h (B x D) to re-written vectors of the same shape and
returns what it addressed, one dict per stage:
    {"indices": LongTensor (B x k), "weights": Tensor (B x k), "similarity": Tensor (B x k), "n_slots": N}
so that training can log slot usage and addressing entropy, and evaluation can score how well a
code matches the slots ("similarity": the cosine similarities of the chosen slots; MemAE: the
largest cosine similarity to any slot). The cascade adds "code", the stage's output after its
connector. A memory whose training objective has an extra term adds it under "loss".
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

BEHAVIOURS = ("paper", "released")
DENSE_READOUT_SLOTS = 256  # up to this many slots, the read-out is one dense matmul (faster on CPU)
ACTIVATIONS = {"leaky_relu": nn.LeakyReLU, "relu": nn.ReLU}


def float32(h):
    """A context in which the memory computes in float32 whatever autocast is on outside it: the
    addressing needs the resolution (bfloat16 keeps 3 significant digits, so nearby cosine
    similarities tie, top-k takes the first index of a tie, and few slots end up used)."""
    return torch.autocast(h.device.type, enabled=False)


def addressing_entropy(weights):
    """Per row of addressing weights (B x N or B x k): -sum_i w_i log w_i. The log is taken of
    max(w, 1e-12), so a zero weight contributes exactly 0 and never log(0)."""
    return -(weights * weights.clamp_min(1e-12).log()).sum(dim=1)


def n_forgotten(forget_rate, n_slots):
    """floor(forget_rate * n_slots), robust to float error (0.29 * 100 -> 29, not 28)."""
    return int(math.floor(forget_rate * n_slots + 1e-9))


class MemoryUnit(nn.Module):
    """One memory stage of the cascade (docs/method.md, "One memory stage"), steps 1-6:

    1. cosine similarity of h to every slot;                         s: (B x N)
    2. in training, a random set of floor(forget_rate * N) slots is forgotten, one set per batch:
       torch.randperm(N)[:n_forget] from torch's default generator (tests/test_models.py replays it);
    3. top-k similarities and their slot indices;                     (B x k)
    4. the addressing threshold on the kept similarities;
    5. softmax over the k kept values gives the weights w;            (B x k)
    6. h' = sum_j w_j * M[index_j].                                   (B x k) x (k x D) = B x D

    behaviour="paper" (as the paper's figure draws it): a forgotten slot is closed and can never
    be chosen; kept similarities at or below `addressing_threshold` get weight exactly 0 and the others are
    renormalised; when no kept similarity passes, the row falls back to weight 1 on its most
    similar slot, so the output is always a finite, convex mix of slots.

    behaviour="released" (the authors' code; docs/method.md, departures 1 and 2): forgotten slots get
    similarity 0 but stay selectable, and ReLU is applied before the softmax, so a clipped score
    still gets weight e^0 / Z.
    """

    def __init__(self, n_slots, slot_dim, top_k, forget_rate=0.0, addressing_threshold=0.0, behaviour="paper"):
        super().__init__()
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown memory behaviour '{behaviour}'; valid: {', '.join(BEHAVIOURS)}")
        if not 0.0 <= forget_rate < 1.0:
            raise ValueError(f"forget_rate must lie in [0, 1), got {forget_rate}")
        n_open = n_slots - (n_forgotten(forget_rate, n_slots) if behaviour == "paper" else 0)
        if not 1 <= top_k <= n_open:
            raise ValueError(f"top_k={top_k} needs 1 <= top_k <= {n_open} (slots left open after forgetting "
                             f"{n_forgotten(forget_rate, n_slots)} of {n_slots})")
        self.n_slots, self.slot_dim, self.top_k = n_slots, slot_dim, top_k
        self.forget_rate, self.addressing_threshold, self.behaviour = forget_rate, addressing_threshold, behaviour
        self.n_forget = n_forgotten(forget_rate, n_slots)
        bound = 1.0 / math.sqrt(slot_dim)
        self.slots = nn.Parameter(torch.empty(n_slots, slot_dim).uniform_(-bound, bound))  # M: N x D

    def forward(self, h):
        with float32(h):  # under bf16 autocast, similarities would tie and top-k would collapse onto few slots
            return self._address(h.to(self.slots.dtype))

    def _address(self, h):
        h, slots = F.normalize(h, dim=1), F.normalize(self.slots, dim=1)
        # 2. forgetting gates: one random set of slots per forward pass, torch's generator
        forgotten = open_slots = None
        if self.training and self.n_forget:
            order = torch.randperm(self.n_slots, device=h.device)
            forgotten, open_slots = order[: self.n_forget], order[self.n_forget:]
        # 1. addressing by cosine similarity: (B x D) x (D x N) = B x N
        if forgotten is not None and self.behaviour == "paper":
            # a closed slot can never be chosen, so it is not even compared: B x (N - n_forget)
            sim = h @ slots.index_select(0, open_slots).t()
        else:
            sim = h @ slots.t()
            if forgotten is not None:  # released quirk 1: similarity 0, still selectable
                sim = sim.index_fill(1, forgotten, 0.0)
        # 3. top-k: B x k, sorted so that column 0 is the most similar slot
        top_sim, indices = sim.topk(self.top_k, dim=1)
        if sim.shape[1] < self.n_slots:
            indices = open_slots[indices]  # positions among the open slots -> slot indices
        # 4.-5. the addressing threshold, then softmax over the kept values
        if self.behaviour == "paper":
            keep = top_sim > self.addressing_threshold
            keep[:, 0] |= ~keep.any(dim=1)  # nothing passes: weight 1 on the most similar slot
            weights = top_sim.masked_fill(~keep, float("-inf")).softmax(dim=1)
        else:  # released quirk 2: ReLU, then softmax: a clipped score still gets weight e^0 / Z
            weights = top_sim.clamp_min(self.addressing_threshold).softmax(dim=1)
        # 6. weighted sum of the chosen slots
        if self.n_slots <= DENSE_READOUT_SLOTS:  # small memory: (B x N) x (N x D) = B x D is cheapest
            out = h.new_zeros(len(h), self.n_slots).scatter(1, indices, weights) @ self.slots
        else:  # large memory: (B x 1 x k) x (B x k x D) = B x D touches only the k chosen slots
            out = torch.bmm(weights.unsqueeze(1), F.embedding(indices, self.slots)).squeeze(1)
        return out, {"indices": indices, "weights": weights, "similarity": top_sim, "n_slots": self.n_slots}

    def extra_repr(self):
        return (f"n_slots={self.n_slots}, slot_dim={self.slot_dim}, top_k={self.top_k}, "
                f"forget_rate={self.forget_rate} ({self.n_forget} slots per pass), "
                f"addressing_threshold={self.addressing_threshold}, behaviour={self.behaviour}")


class CascadeMemory(nn.Module):
    """Memory stages in sequence, each followed by a connector (BatchNorm1d + activation).

    The paper's cascade is two stages: prior memory (50 slots, k = 15, forget rate 0.1) ->
    connector -> posterior memory (1000 slots, k = 5, forget rate 0.5) -> connector.
    One stage is the single-memory ablation; zero stages is the identity (a plain autoencoder).
    """

    def __init__(self, slot_dim, stages, activation="leaky_relu", addressing_threshold=0.0, behaviour="paper"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown connector activation '{activation}'; valid: {', '.join(ACTIVATIONS)}")
        self.units = nn.ModuleList(
            MemoryUnit(s["n_slots"], slot_dim, s["top_k"], s.get("forget_rate", 0.0), addressing_threshold, behaviour)
            for s in stages)
        self.connectors = nn.ModuleList(
            nn.Sequential(nn.BatchNorm1d(slot_dim), ACTIVATIONS[activation]()) for _ in stages)

    def forward(self, h):
        addressed = []
        for unit, connector in zip(self.units, self.connectors):
            h, info = unit(h)
            h = connector(h)
            addressed.append({**info, "code": h})
        return h, addressed


class MemAEMemory(nn.Module):
    """MemAE's memory (Gong et al., ICCV 2019): softmax addressing over all slots, hard shrinkage,
    and an entropy loss on the addressing weights.

        w = softmax(h M^T)                          B x N (inner-product attention, as in MemAE)
        w = relu(w - lambda) * w / (|w - lambda| + eps), then renormalised to sum 1
        h' = w M                                    (B x N) x (N x D) = B x D
        loss = entropy_weight * mean_b( -sum_i w_i log w_i )        (addressing_entropy)
    """

    def __init__(self, n_slots, slot_dim, shrink_threshold=None, entropy_weight=0.0002, eps=1e-12):
        super().__init__()
        if n_slots < 1:
            raise ValueError(f"MemAE memory needs at least one slot, got n_slots={n_slots}")
        self.n_slots, self.slot_dim = n_slots, slot_dim
        self.shrink_threshold = 1.0 / n_slots if shrink_threshold is None else shrink_threshold
        if not 0.0 <= self.shrink_threshold < 1.0:  # a weight of 1 or less would always be shrunk to 0
            raise ValueError(f"MemAE shrink threshold must lie in [0, 1), got {self.shrink_threshold:g} "
                             f"(n_slots={n_slots})")
        self.entropy_weight, self.eps = entropy_weight, eps
        bound = 1.0 / math.sqrt(slot_dim)
        self.slots = nn.Parameter(torch.empty(n_slots, slot_dim).uniform_(-bound, bound))

    def forward(self, h):
        with float32(h):
            return self._address(h.to(self.slots.dtype))

    def _address(self, h):
        w = (h @ self.slots.t()).softmax(dim=1)  # (B x D) x (D x N) = B x N
        if self.shrink_threshold > 0:
            shifted = w - self.shrink_threshold
            w = F.relu(shifted) * w / (shifted.abs() + self.eps)
            w = w / w.sum(dim=1, keepdim=True).clamp_min(self.eps)
        out = w @ self.slots  # (B x N) x (N x D) = B x D
        entropy = addressing_entropy(w).mean()
        indices = torch.arange(self.n_slots, device=h.device).expand_as(w)
        cosine = F.normalize(h, dim=1) @ F.normalize(self.slots, dim=1).t()  # B x N, for the memory score
        return out, [{"indices": indices, "weights": w, "similarity": cosine.max(dim=1, keepdim=True).values,
                      "n_slots": self.n_slots, "loss": self.entropy_weight * entropy}]

    def extra_repr(self):
        return (f"n_slots={self.n_slots}, slot_dim={self.slot_dim}, shrink_threshold={self.shrink_threshold:g}, "
                f"entropy_weight={self.entropy_weight:g}")
