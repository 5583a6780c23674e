"""Seed ensembles: the trials of one class trained with different seeds, combined into one
detector (python main.py --compare DIR --ensemble; an option beside the tables, never a paper row).

The ensemble's score of an image is the mean of the trials' scores of it, each standardised by the
mean and spread of its own trial's scores on the normal validation images (results.json "validation_stats").
Standardising first matters: each seed learns a code and a reconstruction of its own scale. The
fused scores are sums of such standardised scores already and are averaged as they are.
Classical detectors are not ensembled (knn gives the same scores for every seed).

Every trial keeps its test scores in scores.npz, so an ensemble is computed from the results
files alone, without the checkpoints (results/ keeps them only for the runs whose ensembles it
cites, results/README.md). The validation threshold of a trial does not carry over to
the mean, so an ensemble has no "F1 @ val. threshold".
"""
import numpy as np

from tool.errors import UserError
from tool.evaluation import compute_metrics
from tool.results import read_scores
from tool.scores import FUSIONS, SCORES, standardised


def ensemble_scores(folders, results, score):
    """(targets, the seed ensemble's per-image test scores of `score`) from the finished trial
    folders of one class, `results` their results.json dicts in the same order."""
    targets, members = None, []
    for folder, result in zip(folders, results):
        trial_targets, scores = read_scores(folder, result)
        if score not in scores or (score not in FUSIONS and score not in result["validation_stats"]):
            raise UserError(f"{folder} has no {score} scores or no validation statistics for them; score it again: "
                            f"python main.py --eval-only {folder.parent}")
        if targets is None:
            targets = trial_targets
        elif not np.array_equal(targets, trial_targets):
            raise UserError(f"{folder}: its test images differ from those of the other seeds of its class "
                            f"(scores.npz targets); an ensemble needs the same test split for every seed.")
        members.append(scores[score] if score in FUSIONS else standardised(result["validation_stats"], score, scores[score]))
    if not all(np.isfinite(m).all() for m in members) or len(np.unique(targets)) != 2:
        raise UserError(f"{folders[0]}: the seeds' {score} scores are not all finite, or the test split lacks "
                        f"anomalous or normal images; score the trials again: python main.py --eval-only "
                        f"{folders[0].parent}")
    return targets, np.mean(members, axis=0)


def ensemble_summary(run_dir, results, classes, seeds, score):
    """The seed ensemble of `score` as a row in the form of report.summarise: {class: {metric:
    (value, 0.0, 1)}, "mean": {metric: (mean over classes, 0.0, 1)}}, from the seeds of `seeds`
    that finished every class and kept their per-image scores; None when fewer than two did, or
    `score` is not a network's."""
    if (score not in SCORES and score not in FUSIONS) or not classes:
        return None
    complete = [s for s in seeds if all((c, s) in results and score in results[(c, s)]["metrics"]
                                        and (run_dir / f"class{c}_seed{s}" / "scores.npz").is_file() for c in classes)]
    if len(complete) < 2:  # (a run kept without its per-image scores has no ensemble: results/README.md)
        return None
    if score not in FUSIONS and any(score not in results[(c, s)]["validation_stats"] for c in classes for s in complete):
        return None  # trials scored before the validation statistics were kept: no ensemble row (not an error)
    rows = {}
    for c in classes:
        folders = [run_dir / f"class{c}_seed{s}" for s in complete]
        targets, scores = ensemble_scores(folders, [results[(c, s)] for s in complete], score)
        rows[c] = {metric: (value, 0.0, 1) for metric, value in compute_metrics(scores, targets).items()}
    rows["mean"] = {metric: (float(np.mean([rows[c][metric][0] for c in classes])), 0.0, 1)
                    for metric in rows[classes[0]]}
    rows["seeds"] = complete
    return rows
