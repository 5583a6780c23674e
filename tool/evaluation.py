"""The metrics of a trial's scores, and the decision threshold fixed before the test split is seen.

One score convention everywhere: higher = more anomalous, target 1 = anomaly. AUROC below 0.5 is
reported as it is, never flipped. (The scores themselves: tool/scores.py.)
"""
import numpy as np
import torch
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, roc_auc_score

METRICS = {  # key in results.json -> column title
    "auroc": "AUROC",
    "auprc": "AUPRC",
    "f1_oracle": "best F1 (oracle)",
    "f1_val_threshold": "F1 @ val. threshold",
}


def eval_batch_size(device):
    """Images per evaluation batch: 256 on a CPU (cache-sized: 2.4x faster than 4096 for the conv
    models), 4096 on an accelerator. Eval mode works per image, so
    a score does not depend on which images share its batch beyond float rounding: the same image
    can differ in the last digits (about 1e-7 relative) when its batch is made of other images."""
    return 256 if torch.device(device).type == "cpu" else 4096


def batches(images, batch_size=None, device=None):
    """`images` cut into evaluation batches for `device` (default: the images' own); every
    evaluation pass goes through here."""
    return images.split(batch_size or eval_batch_size(device if device is not None else images.device))


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


def evaluate(test_scores, targets, scorer):
    """What results.json keeps of a fitted scorer's test scores ({score: values}): each score's
    metrics at its validation threshold, the thresholds and their percentile, and the validation
    statistics the fused scores and seed ensembles standardise with."""
    targets = np.asarray(targets)
    return {"metrics": {name: compute_metrics(values, targets, scorer.thresholds[name])
                        for name, values in test_scores.items()},
            "thresholds": {name: scorer.thresholds[name] for name in test_scores},
            "threshold_percentile": scorer.percentile, "validation_stats": scorer.val_stats}
