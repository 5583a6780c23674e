"""Anomaly scores of a trained model, the decision threshold, and the metrics.

One score convention everywhere: higher = more anomalous, target 1 = anomaly. AUROC below 0.5 is
reported as it is, never flipped.
"""
import warnings

import numpy as np
import torch
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, roc_auc_score

from tool.datasets import scale_images

SCORES = {  # every score a trained network gets (a classical detector has one: its own, named after it)
    "recon": "L2 norm of the reconstruction error, the paper's score",
    "latent-knn": "mean Euclidean distance of the encoder's code to its nearest codes of normal training images",
    "latent-lof": "local outlier factor of the encoder's code among the same codes: its neighbours' distance "
                  "relative to their own neighbours'",
    "memory": "1 - mean cosine similarity of each memory stage's input to the slots it chose, summed over stages",
    "fused": "recon, latent-knn and memory, each standardised by its mean and spread on the normal validation "
             "images, summed",
    "fused-lof": "fused with latent-lof in the sum",
    "hidden-knn": "latent-knn in the MLP encoder's first hidden layer (512 features) instead of its code",
    "hidden-lof": "latent-lof in the same layer, among the same training features",
    "fused-hidden": "fused-lof with hidden-knn and hidden-lof in place of latent-knn and latent-lof",
}
LATENT_KNN = {"k": 5, "bank": 16384}  # neighbours, and the normal training codes kept (fmnist-tune, results/tuning.md)
HIDDEN_KNN = {"bank": 8192}  # the training features hidden-knn and hidden-lof keep (float16: 8 MB; fmnist-tune, results/tuning.md)
FUSIONS = {  # a fused score: the scores it sums (those the model has), and the one it cannot be without
    "fused": (("recon", "latent-knn", "memory"), None),
    "fused-lof": (("recon", "latent-knn", "latent-lof", "memory"), "latent-lof"),
    "fused-hidden": (("recon", "hidden-knn", "hidden-lof", "memory"), "hidden-lof"),
}
METRICS = {  # key in results.json -> column title
    "auroc": "AUROC",
    "auprc": "AUPRC",
    "f1_oracle": "best F1 (oracle)",
    "f1_val_threshold": "F1 @ val. threshold",
}


def eval_batch_size(device):
    """Images per evaluation batch: 256 on a CPU (cache-sized: 2.4x faster than 4096 for the conv
    models), 4096 on an accelerator. Scores do not depend on it (eval mode works per image)."""
    return 256 if torch.device(device).type == "cpu" else 4096


def batches(images, batch_size=None):
    """`images` cut into evaluation batches (every evaluation pass goes through here)."""
    return images.split(batch_size or eval_batch_size(images.device))


@torch.inference_mode()
def reconstruct(model, images, batch_size=None):
    """Reconstructions of float `images` by `model` in eval mode."""
    model.eval()
    return torch.cat([model(xb)["recon"] for xb in batches(images, batch_size)])


@torch.inference_mode()
def anomaly_scores(model, images, batch_size=None):
    """Per-sample L2 norm of the reconstruction error, ||x_hat - x||_2; higher = more anomalous."""
    model.eval()
    scores = [torch.linalg.vector_norm((model(xb)["recon"] - xb).flatten(1), dim=1)
              for xb in batches(images, batch_size)]
    return torch.cat(scores).double().cpu().numpy()


def hidden_layer(model):
    """The module whose output is the encoder's first hidden layer (hidden-knn's features), or
    None for an encoder that names none (the conv encoders: 64 x 14 x 14 numbers would make a bank
    of hundreds of MB)."""
    named = getattr(model.encoder, "hidden_layer", None)
    return named() if named is not None else None


@torch.inference_mode()
def network_outputs(model, images, batch_size=None):
    """One evaluation pass: per image the reconstruction error (as anomaly_scores computes it),
    the encoder's code, its first hidden layer's features (an MLP encoder; else None), and for a
    model with memory how poorly the code matches the slots."""
    model.eval()
    recon, codes, memory, hidden = [], [], [], []
    layer = hidden_layer(model)
    hook = layer.register_forward_hook(lambda module, inputs, output: hidden.append(output.flatten(1).float())) \
        if layer is not None else None
    try:
        for xb in batches(images, batch_size):
            out = model(xb)
            recon.append(torch.linalg.vector_norm((out["recon"] - xb).flatten(1), dim=1))
            codes.append(out["latent"].float())
            if out["memory"]:
                memory.append(sum(1 - info["similarity"].mean(dim=1) for info in out["memory"]))
    finally:
        if hook is not None:
            hook.remove()
    return {"recon": torch.cat(recon).double().cpu().numpy(), "code": torch.cat(codes).cpu(),
            "hidden": torch.cat(hidden).cpu() if hidden else None,
            "memory": torch.cat(memory).double().cpu().numpy() if memory else None}


def _training_subset(train_images, seed, size):
    """The `size` training images a bank is made of, drawn with `seed` (all when there are fewer),
    in their order; a smaller bank's images are the first of a larger one's draw."""
    return train_images[torch.from_numpy(np.sort(np.random.default_rng(seed).permutation(len(train_images))[:size]))]


def latent_bank(model, train_images, seed, device="cpu", size=None):
    """The normal training codes latent-knn compares with: the codes of `size` (LATENT_KNN) of the
    uint8 `train_images` drawn with `seed` (all of them when there are fewer), rounded to float16
    (as bank.pt stores them), as float32 on the CPU."""
    size = LATENT_KNN["bank"] if size is None else size
    codes = network_outputs(model, scale_images(_training_subset(train_images, seed, size), device))["code"]
    return codes.half().float()  # bank.pt keeps float16 (4 MB at 16,384 codes); scores use exactly those values


def hidden_bank(model, train_images, seed, device="cpu", size=None):
    """The normal training features hidden-knn compares with: the first hidden layer's features of
    `size` (HIDDEN_KNN) training images drawn as latent_bank draws them, float16-rounded, float32 on
    the CPU; None for a model without such a layer (hidden_layer)."""
    if hidden_layer(model) is None:
        return None
    size = HIDDEN_KNN["bank"] if size is None else size
    features = network_outputs(model, scale_images(_training_subset(train_images, seed, size), device))["hidden"]
    return features.half().float()


def knn_distance(codes, bank, k=None):
    """Mean Euclidean distance of each code to its k nearest codes of `bank`."""
    k = min(LATENT_KNN["k"] if k is None else k, len(bank))
    distances = [torch.cdist(q, bank).topk(k, dim=1, largest=False).values for q in codes.split(4096)]
    return torch.cat(distances).mean(dim=1).double().numpy()


def fit_lof(bank, k=None):
    """scikit-learn's LocalOutlierFactor (novelty mode, exact neighbours) fitted on the codes of a
    latent-knn bank, or None for a bank of fewer than 2 codes. k = LATENT_KNN's, at most the bank's
    size - 1. One thread: the scores do not depend on the core count. Refitted from the bank
    wherever it is needed (a few seconds at 16,384 codes), so nothing but the bank is stored."""
    from sklearn.neighbors import LocalOutlierFactor
    from threadpoolctl import threadpool_limits

    if bank is None or len(bank) < 2:
        return None
    k = min(LATENT_KNN["k"] if k is None else k, len(bank) - 1)
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate codes: LOF stays finite (scikit-learn adds 1e-10)
        return LocalOutlierFactor(n_neighbors=k, novelty=True, algorithm="brute").fit(bank.double().numpy())


def lof_score(lof, codes):
    """The local outlier factor of each code (about 1 for an inlier, higher = more anomalous)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return -lof.score_samples(codes.double().numpy())


def fusion_stats(val_scores):
    """{score: [mean, std]} of each score's normal validation scores: what `fused` standardises with."""
    return {name: [float(np.mean(values)), float(np.std(values)) or 1.0] for name, values in val_scores.items()}


def fused(stats, scores):
    """The fused score: each of `scores` ({score: values}) standardised with `stats`, summed."""
    return sum((np.asarray(values) - stats[name][0]) / stats[name][1] for name, values in scores.items())


def fusions(stats, scores):
    """{fused score: per-image values} of every fusion of FUSIONS that `scores` ({score: values})
    allows: each sums the members it has standardised with `stats` (a model without a memory has
    no memory score), and none is made without the score it needs."""
    made = {}
    for name, (members, needs) in FUSIONS.items():
        if needs is None or (needs in scores and needs in stats):
            made[name] = fused(stats, {m: scores[m] for m in members if m in scores and m in stats})
    return made


def image_scores(model, images, bank, lof=None, hidden=None, hidden_lof=None):
    """{score: per-image scores} of every score but the fused ones (latent-knn: given a bank;
    latent-lof: given the LOF fitted on it, fit_lof; hidden-knn and hidden-lof: the same, given the
    bank of hidden features, hidden_bank; memory: models with a memory)."""
    out = network_outputs(model, images)
    scores = {"recon": out["recon"]}
    if bank is not None:
        scores["latent-knn"] = knn_distance(out["code"], bank)
    if lof is not None:
        scores["latent-lof"] = lof_score(lof, out["code"])
    if hidden is not None and out["hidden"] is not None:
        scores["hidden-knn"] = knn_distance(out["hidden"], hidden)
        if hidden_lof is not None:
            scores["hidden-lof"] = lof_score(hidden_lof, out["hidden"])
    if out["memory"] is not None:
        scores["memory"] = out["memory"]
    return scores


def network_scores(model, val_images, test_images, bank, hidden=None):
    """({score: (validation scores, test scores)}, fusion stats) of a trained network: every
    score of SCORES that applies, the fused ones standardised on the validation scores."""
    lof, hidden_lof = fit_lof(bank), fit_lof(hidden)
    val, test = (image_scores(model, images, bank, lof, hidden, hidden_lof) for images in (val_images, test_images))
    stats = fusion_stats(val)
    val.update(fusions(stats, val))
    test.update(fusions(stats, test))
    return {name: (val[name], test[name]) for name in val}, stats


def validation_threshold(val_scores, percentile):
    """The decision threshold fixed before the test set is seen: a percentile of the scores of
    normal validation images (95th: about 5% of normal images are flagged)."""
    return float(np.percentile(val_scores, percentile))


def compute_metrics(scores, targets, threshold=None):
    """AUROC, AUPRC, oracle best F1 and, given a threshold fixed beforehand, F1 at it.

    scores: higher = more anomalous; targets: 1 = anomaly. "f1_oracle" picks its threshold on the
    test labels themselves, so it is an upper bound, not an operating point.
    """
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets).astype(int)
    if not np.isfinite(scores).all():
        raise ValueError("anomaly scores contain NaN or infinity")
    if len(np.unique(targets)) != 2:
        raise ValueError("metrics need both normal (0) and anomalous (1) targets")
    precision, recall, _ = precision_recall_curve(targets, scores)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                   where=(precision + recall) > 0)
    metrics = {"auroc": float(roc_auc_score(targets, scores)),
               "auprc": float(average_precision_score(targets, scores)),
               "f1_oracle": float(f1.max())}
    if threshold is not None:
        metrics["f1_val_threshold"] = float(f1_score(targets, scores > threshold, zero_division=0))
    return metrics
