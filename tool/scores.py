"""Every anomaly score of a trained network, in one place: what each score reads, what it keeps of
the normal training images, and how the fused scores are made. Higher = more anomalous.

A `Scorer` is fitted once per trial from the trained model and the trial's normal images: the
banks of normal training features the neighbour scores compare with, each score's mean and spread
on the normal validation images (what a fusion standardises with), and each score's decision
threshold (a percentile of its validation scores, fixed before the test split is seen). It scores
any images with every score, and its state is what a trial keeps (bank.pt and results.json) and
what the Python detector saves. main.py, --eval-only, score.py and the detector all go through it;
adding a score touches this file and its test only.
"""
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from models.ssl import N_ROTATIONS
from tool.data.datasets import scale_images
from tool.errors import UserError
from tool.evaluation import batches, validation_threshold


@dataclass(frozen=True)
class Score:
    about: str
    feature: str  # what of the evaluation pass it reads (network_outputs)
    method: str = "value"  # value: the feature itself; knn, lof, csi: compared with the feature's bank


SCORES = {
    "recon": Score("L2 norm of the reconstruction error, the paper's score", "recon"),
    "latent-knn": Score("mean Euclidean distance of the encoder's code to its 5 nearest codes of normal training "
                        "images", "code", "knn"),
    "latent-lof": Score("local outlier factor of the code among the same codes: its neighbours' distance relative "
                        "to their own neighbours'", "code", "lof"),
    "memory": Score("1 - mean cosine similarity of each memory stage's input to the slots it chose, summed over "
                    "stages", "memory"),
    "hidden-knn": Score("latent-knn in the MLP encoder's first hidden layer (512 features) instead of its code",
                        "hidden", "knn"),
    "hidden-lof": Score("latent-lof in the same layer, among the same training features", "hidden", "lof"),
    "transform": Score("how poorly the self-supervised head recognises the transformations of the image "
                       "(its rotations, and those of its mirror image with transforms-flips): "
                       "-sum over them t of log p(t | the image transformed by t)", "transform_nll"),
    "views-knn": Score("latent-knn of the code of each transformation of the image among the same transformation "
                       "of normal training images, summed over the transformations", "views", "knn"),
    "views-lof": Score("latent-lof of each transformation's code among the same transformation's training codes, "
                       "summed", "views", "lof"),
    "csi": Score("CSI's score, negated: minus the sum over transformations of the cosine of the code to its "
                 "nearest training code of the same transformation, times the code's norm", "views", "csi"),
}
class Fusion(NamedTuple):
    members: tuple  # the scores it sums (those the model has)
    needs: str | None  # the member it cannot be without
    floor: float | None = None  # each standardised member counts as at least this much


FUSIONS = {
    "fused": Fusion(("recon", "latent-knn", "memory"), None),
    "fused-lof": Fusion(("recon", "latent-knn", "latent-lof", "memory"), "latent-lof"),
    "fused-hidden": Fusion(("recon", "hidden-knn", "hidden-lof", "memory"), "hidden-lof"),
    # every score of the model (fmnist-tune, results/tuning.md: 77.76 against 75.90 for fused-lof), each
    # counted as at least one spread below its validation mean: a member that points the wrong way on a
    # class (an anomaly it finds more typical than the normal images) cannot cancel the others' evidence
    # (fmnist-tune: 78.21 against 77.76 without the floor; no gain for fused-lof, which keeps none)
    "fused-ssl": Fusion(("recon", "latent-knn", "latent-lof", "memory", "transform", "views-knn", "views-lof", "csi"),
                        "transform", floor=-1.0),
}
ABOUT_FUSIONS = ("each member standardised by its mean and spread on the normal validation images, summed "
                 "(fused-ssl: each counted as at least -1)")
RECOMMENDED = ("fused-ssl", "fused-hidden", "fused-lof", "fused")  # the best score of a network, the first it has
# (chosen on fmnist-tune, results/tuning.md: fused-lof for conv encoders, fused-hidden for MLP ones, fused-ssl
# with a self-supervised task); SCORE = "best" in main.py, and the detector's and score.py's default
NEIGHBOURS = 5  # k of every knn and lof score (fmnist-tune, results/tuning.md)
BANK_SIZES = {"code": 16384, "hidden": 8192, "views": 8192}  # normal training images whose features a trial keeps


def names_of(features, banks=None, stats=None):
    """Every score (fused ones included) a model with `features` (network_outputs' keys) has; with
    `banks`, only the neighbour scores whose bank is there, and with `stats` ({score: [mean,
    spread]}), only fusions whose members all have theirs. A fusion is there only when every member
    the model has is: a fused score is never quietly made of fewer members than it was fitted with."""
    def has(name):
        score = SCORES[name]
        return score.feature in features and (banks is None or score.method == "value" or score.feature in banks)

    base = [name for name in SCORES if has(name)]
    fused = []
    for name, (members, needs, _) in FUSIONS.items():
        own = [m for m in members if SCORES[m].feature in features]  # the members this kind of model has
        if (own and all(has(m) and (stats is None or m in stats) for m in own)
                and (needs is None or needs in own)):
            fused.append(name)
    return base + fused


def recommended(names):
    """The score a table, the detector and score.py give by default, of a trial or network with
    the scores `names`: the first of RECOMMENDED it has, else its first (recon; a classical
    detector's only one)."""
    return next((name for name in RECOMMENDED if name in names), next(iter(names)))


def features_of(model):
    """What the evaluation pass gives for `model`: recon and code always; memory, hidden, and the
    self-supervised task's views and transform_nll where the model has them."""
    found = {"recon", "code"}
    if getattr(model, "memory", None) is not None:
        found.add("memory")
    if getattr(model.encoder, "hidden_layer", None) is not None:
        found.add("hidden")
    if getattr(model, "ssl", None) is not None:
        found |= {"views", "transform_nll"}
    return found


@torch.inference_mode()
def network_outputs(model, images):
    """One evaluation pass over uint8 `images` (N x C x H x W): per image the reconstruction error
    (L2 norm of x_hat - x), the encoder's code, and what features_of(model) lists beyond them."""
    model.eval()
    device = next(model.parameters()).device
    layer = model.encoder.hidden_layer() if "hidden" in features_of(model) else None
    parts = {name: [] for name in features_of(model)}
    rows = [0]  # with a task the encoder sees the K copies of a batch at once: copy 0 (the images) comes first
    hook = layer.register_forward_hook(lambda m, i, out: parts["hidden"].append(out[: rows[0]].flatten(1).float().cpu())) \
        if layer is not None else None
    try:
        for xb in batches(images, device=device):
            xb = scale_images(xb, device)
            rows[0] = len(xb)
            out = model(xb)
            parts["recon"].append(torch.linalg.vector_norm((out["recon"] - xb).flatten(1), dim=1).double().cpu())
            parts["code"].append(out["latent"].float().cpu())
            if "memory" in parts:
                parts["memory"].append(sum(1 - info["similarity"].mean(dim=1) for info in out["memory"]).double().cpu())
            if "views" in parts:
                parts["views"].append(out["ssl"]["views"].float().cpu())
                parts["transform_nll"].append(out["ssl"]["transform_nll"].double().cpu())
    finally:
        if hook is not None:
            hook.remove()
    outputs = {name: torch.cat(values, dim=1 if name == "views" else 0) for name, values in parts.items()}
    broken = [name for name, values in outputs.items() if not torch.isfinite(values).all()]
    if broken:  # weights that diverged without a NaN loss (a learning rate far too high): no score means anything
        raise UserError(f"the trained network gives values that are not finite ({', '.join(broken)}): its training "
                        f"diverged. Train it again with a lower learning rate (--lr).")
    return outputs


def training_subset(train_images, seed, size):
    """The `size` training images a bank is made of, drawn with `seed` (all when there are fewer),
    in their order; a smaller bank's images are the first of a larger one's draw."""
    return train_images[torch.from_numpy(np.sort(np.random.default_rng(seed).permutation(len(train_images))[:size]))]


def knn_distance(codes, bank, k=NEIGHBOURS):
    """Mean Euclidean distance of each code to its k nearest codes of `bank`."""
    k = min(k, len(bank))
    distances = [torch.cdist(q, bank).topk(k, dim=1, largest=False).values for q in codes.split(4096)]
    return torch.cat(distances).mean(dim=1).double().numpy()


def fit_lof(bank, k=NEIGHBOURS):
    """scikit-learn's LocalOutlierFactor (novelty mode, exact neighbours) fitted on a bank, or None
    for fewer than 2 codes; k at most the bank's size - 1; one thread, so that the scores do not
    depend on the core count. Refitted from the bank wherever it is needed (seconds)."""
    from sklearn.neighbors import LocalOutlierFactor
    from threadpoolctl import threadpool_limits

    if len(bank) < 2:
        return None
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate codes: LOF stays finite (scikit-learn adds 1e-10)
        return LocalOutlierFactor(n_neighbors=min(k, len(bank) - 1), novelty=True, algorithm="brute").fit(
            bank.double().numpy())


def lof_score(lof, codes):
    """The local outlier factor of each code (about 1 for an inlier, higher = more anomalous)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return -lof.score_samples(codes.double().numpy())


def csi_score(codes, bank):
    """Minus the cosine similarity of each code to its most similar code of `bank`, times its norm."""
    unit = F.normalize(bank, dim=1)
    best = torch.cat([(F.normalize(q, dim=1) @ unit.t()).max(dim=1).values for q in codes.split(4096)])
    return (-best * codes.norm(dim=1)).double().numpy()


def validation_stats(val_scores):
    """{score: [mean, spread]} of each score's normal validation scores (a spread of 0 counts as 1):
    what the fused scores and the seed ensembles standardise with (results.json "validation_stats")."""
    return {name: [float(np.mean(v)), float(np.std(v)) or 1.0] for name, v in val_scores.items()}


def standardised(stats, name, values):
    """`values` of score `name` standardised by its validation [mean, spread] in `stats`."""
    mean, spread = stats[name]
    return (np.asarray(values, dtype=np.float64) - mean) / spread


def fusions(stats, scores):
    """{fused score: per-image values} of every fusion of FUSIONS that `scores` ({score: values})
    and `stats` allow: each sums its members the model has, standardised (each at least the
    fusion's floor, where it has one); none is made without the member it needs."""
    made = {}
    for name, (members, needs, floor) in FUSIONS.items():
        present = [m for m in members if m in scores and m in stats]
        if present and (needs is None or needs in present):
            made[name] = fused_sum([standardised(stats, m, scores[m]) for m in present], floor)
    return made


def fused_sum(standardised_members, floor=None):
    """The sum of standardised member scores, each counted as at least `floor` (None: as it is)."""
    return sum(z if floor is None else np.maximum(z, floor) for z in standardised_members)


class Scorer:
    """Every score of one trained network (see the top of this file)."""

    def __init__(self, model, banks, val_stats=None, thresholds=None, percentile=None):
        self.model, self.banks = model, banks  # {feature: float32 tensor on the CPU, float16-exact}
        self.val_stats, self.thresholds, self.percentile = val_stats or {}, thresholds or {}, percentile
        self.names = names_of(features_of(model))
        self._lofs = {}

    @classmethod
    def fit(cls, model, train_images, val_images, seed, percentile):
        """Fitted on uint8 normal `train_images` (the banks, drawn with `seed`) and `val_images`
        (statistics and thresholds at the `percentile`)."""
        features = features_of(model)
        banks = {feature: network_outputs(model, training_subset(train_images, seed, size))[feature].half().float()
                 for feature, size in BANK_SIZES.items() if feature in features}
        if any(not torch.isfinite(bank).all() or bank.abs().max() > BANK_LIMIT for bank in banks.values()):
            raise UserError(f"the trained network's codes reach beyond {BANK_LIMIT:g} (or float16's range): its "
                            f"training diverged. Train it again with a lower learning rate (--lr).")
        scorer = cls(model, banks, percentile=percentile)
        val = scorer.scores(val_images, base_only=True)
        scorer.val_stats = validation_stats(val)
        val.update(fusions(scorer.val_stats, val))
        scorer.thresholds = {name: validation_threshold(values, percentile) for name, values in val.items()}
        return scorer

    def scores(self, images, names=None, base_only=False):
        """{score: float64 per-image values} of uint8 `images` for `names` (default: every score the
        model has); only what those scores need is computed."""
        names = self.names if names is None else list(names)
        base = {m for name in names for m in (FUSIONS[name][0] if name in FUSIONS else (name,)) if m in SCORES}
        out = network_outputs(self.model, images)
        found = {name: self._score(name, out) for name in SCORES if name in base and SCORES[name].feature in out}
        if base_only:
            return found
        found.update(fusions(self.val_stats, found))
        return {name: found[name] for name in names if name in found}

    def _score(self, name, out):
        score = SCORES[name]
        values = out[score.feature]
        if score.method == "value":
            return values.numpy()
        if score.feature == "views":  # a bank per transformation: its score, summed over them
            return sum(self._compare(score.method, (name, t), values[t], self.banks["views"][t])
                       for t in range(len(values)))
        return self._compare(score.method, name, values, self.banks[score.feature])

    def _compare(self, method, key, codes, bank):
        if method == "knn":
            return knn_distance(codes, bank)
        if method == "csi":
            return csi_score(codes, bank)
        if key not in self._lofs:
            self._lofs[key] = fit_lof(bank)
        return lof_score(self._lofs[key], codes)

    def state(self):
        """What the scorer fitted, in types torch.load(weights_only=True) reads: the banks as
        float16 (exactly the values it scores with), the statistics and the thresholds."""
        return {"banks": {f: b.half().contiguous() for f, b in self.banks.items()}, "validation_stats": self.val_stats,
                "thresholds": self.thresholds, "percentile": self.percentile}

    @classmethod
    def from_state(cls, model, state):
        """A scorer from state() (a trial's bank.pt with its results.json, or a detector file),
        checked: a ValueError says what is wrong (the callers name the file)."""
        if not isinstance(state, dict) or not isinstance(state.get("banks"), dict):
            raise ValueError("no banks")
        needs = {f for f in features_of(model) if f in BANK_SIZES}
        banks = {f: _checked_bank(state["banks"].get(f), f, model) for f in needs if f in state["banks"]}
        val_stats, thresholds = state.get("validation_stats"), state.get("thresholds")
        if not (isinstance(val_stats, dict) and all(is_mean_and_spread(v) for v in val_stats.values())):
            raise ValueError("the validation statistics are not [mean, spread] pairs of finite numbers")
        if not (isinstance(thresholds, dict) and all(_finite_number(v) for v in thresholds.values())):
            raise ValueError("the thresholds are not finite numbers")
        scorer = cls(model, banks, {k: [float(a), float(b)] for k, (a, b) in val_stats.items()},
                     {k: float(v) for k, v in thresholds.items()}, state.get("percentile"))
        scorer.names = [n for n in names_of(features_of(model), banks, scorer.val_stats) if n in scorer.thresholds]
        return scorer


def _finite_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(float(value)))


STATS_LIMIT = 1e12  # |mean| and spread of a score's validation statistics; its spread at least 1 / STATS_LIMIT


def is_mean_and_spread(value):
    """A score's validation [mean, spread] as every reader needs it (results.json, a detector file,
    the seed ensembles): two finite numbers, |mean| and spread at most STATS_LIMIT and the spread at
    least 1 / STATS_LIMIT, so that standardising a finite score gives a finite number."""
    try:
        return (isinstance(value, (list, tuple)) and len(value) == 2 and all(_finite_number(v) for v in value)
                and abs(float(value[0])) <= STATS_LIMIT and 1 / STATS_LIMIT <= float(value[1]) <= STATS_LIMIT)
    except OverflowError:  # an integer beyond float's range
        return False


BANK_LIMIT = 1e4  # |feature| a bank may hold: codes and features of this code are within a few hundred


def _checked_bank(bank, feature, model):
    """A saved bank as float32, refused (ValueError) unless it is at least 2 finite rows of the
    width the model gives (views: one such bank per transformation of the model's task)."""
    if not isinstance(bank, torch.Tensor) or not bank.is_floating_point():
        raise ValueError(f"the {feature} bank is not a tensor of numbers")
    rows = bank.shape[-2] if bank.ndim >= 2 else 0
    width = getattr(model.encoder, "hidden_width", None) if feature == "hidden" else _code_width(model)
    k = getattr(getattr(model, "ssl", None), "n_transforms", N_ROTATIONS)
    if rows > BANK_SIZES[feature] or bank.ndim > 3 or bank.shape[-1:] != (width,) or \
            (bank.ndim == 3 and bank.shape[0] != k):  # before a forged expand()ed bank is computed on
        raise ValueError(f"the {feature} bank is damaged: {tuple(bank.shape)}, the model gives {width} numbers per "
                         f"image and a trial keeps at most {BANK_SIZES[feature]} images")
    bank = bank.float().contiguous()
    if (bank.ndim != (3 if feature == "views" else 2) or rows < 2 or bank.shape[-1] != width
            or (feature == "views" and bank.shape[0] != k)
            or not torch.isfinite(bank).all() or bank.abs().max() > BANK_LIMIT):
        raise ValueError(f"the {feature} bank is damaged: {tuple(bank.shape)}, the model gives {width} numbers "
                         f"per image" + ("" if torch.isfinite(bank).all() else ", with values that are not finite"))
    return bank


def _code_width(model):
    return model.encoder.latent_dim
