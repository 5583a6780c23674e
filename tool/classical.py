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


def fit_and_score(name, train, evaluate, seed):
    """Fit detector `name` on `train` (N x P float array of normal images); return the anomaly
    scores (higher = more anomalous) of each array in the list `evaluate`."""
    if name == "knn":
        k = min(KNN_K, len(train))
        index = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(train)
        return [index.kneighbors(x)[0].mean(axis=1) for x in evaluate]
    if name == "iforest":
        pca = _pca(train, seed)
        forest = IsolationForest(n_estimators=200, max_samples=256, random_state=seed).fit(pca.transform(train))
        return [-forest.score_samples(pca.transform(x)) for x in evaluate]
    if name == "ocsvm":
        rng = np.random.default_rng(seed)
        subset = train[rng.permutation(len(train))[:OCSVM_MAX_TRAIN]] if len(train) > OCSVM_MAX_TRAIN else train
        pca = _pca(subset, seed)
        svm = OneClassSVM(kernel="rbf", gamma="scale", nu=0.1).fit(pca.transform(subset))
        return [-svm.score_samples(pca.transform(x)) for x in evaluate]
    raise ValueError(f"unknown classical detector '{name}'; valid: {', '.join(CLASSICAL)}")
