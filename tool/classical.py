"""Classical detectors a practitioner tries first, on the same splits and tables as the networks.

Each is fitted on the normal training images only (pixels scaled to [-1, 1] exactly as for the
networks, flattened), and scores with the project's convention: higher = more anomalous.

    knn      mean Euclidean distance to the 5 nearest normal training images, on pixels
    iforest  Isolation Forest (200 trees, 256 samples each), on a 50-component PCA of the pixels
    ocsvm    One-Class SVM (RBF kernel, gamma "scale", nu 0.1), on a 50-component PCA of the
             pixels, fitted on at most 10,000 normal training images drawn with the seed (the
             exact solver is quadratic in the number of images)
"""
import numpy as np
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import NearestNeighbors
from sklearn.svm import OneClassSVM

from tool.data.datasets import scale_images
from tool.evaluation import validation_threshold
from tool.scores import validation_stats

CLASSICAL = {
    "knn": "k-nearest-neighbour distance (k = 5) to the normal training images, pixels",
    "iforest": "Isolation Forest (200 trees), 50-component PCA of the pixels",
    "ocsvm": "One-Class SVM (RBF, nu = 0.1), 50-component PCA, <= 10,000 training images",
}
KNN_K = 5
PCA_COMPONENTS = 50
OCSVM_MAX_TRAIN = 10_000


def _pca(train, seed):
    return PCA(n_components=min(PCA_COMPONENTS, *train.shape), random_state=seed).fit(train)


def fit_detector(name, train, seed):
    """Fit detector `name` on `train` (N x P float array of normal images); return the function
    that gives the anomaly scores (higher = more anomalous) of an array of images."""
    if name == "knn":
        index = NearestNeighbors(n_neighbors=min(KNN_K, len(train)), algorithm="brute").fit(train)
        return lambda x: index.kneighbors(x)[0].mean(axis=1)
    if name == "iforest":
        pca = _pca(train, seed)
        forest = IsolationForest(n_estimators=200, max_samples=256, random_state=seed).fit(pca.transform(train))
        return lambda x: -forest.score_samples(pca.transform(x))
    if name == "ocsvm":
        rng = np.random.default_rng(seed)
        subset = train[rng.permutation(len(train))[:OCSVM_MAX_TRAIN]] if len(train) > OCSVM_MAX_TRAIN else train
        pca = _pca(subset, seed)
        svm = OneClassSVM(kernel="rbf", gamma="scale", nu=0.1).fit(pca.transform(subset))
        return lambda x: -svm.score_samples(pca.transform(x))
    raise ValueError(f"unknown classical detector '{name}'; valid: {', '.join(CLASSICAL)}")


def _flat(images):
    """uint8 images (N x C x H x W) as the networks see them, scaled to [-1, 1], one row each."""
    return scale_images(images).flatten(1).numpy()


class ClassicalScorer:
    """A classical detector in the shape of tool.scores.Scorer: one score, named after it, its
    validation statistics and its decision threshold."""

    def __init__(self, name, detect, val_stats, thresholds, percentile):
        self.names, self._detect = [name], detect
        self.val_stats, self.thresholds, self.percentile = val_stats, thresholds, percentile

    @classmethod
    def fit(cls, name, train_images, val_images, seed, percentile):
        """Fitted on the uint8 normal `train_images`; threshold at `percentile` of `val_images`' scores."""
        detect = fit_detector(name, _flat(train_images), seed)
        val = detect(_flat(val_images))
        return cls(name, detect, validation_stats({name: val}), {name: validation_threshold(val, percentile)}, percentile)

    def scores(self, images, names=None):
        return {self.names[0]: np.asarray(self._detect(_flat(images)), dtype=np.float64)}
