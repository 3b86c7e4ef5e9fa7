"""A k-nearest-neighbour one-class model: distance to the k-th nearest
normal calibration image in feature space."""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors

from ..decision import OneClassModel
from ..registry import ONE_CLASS_MODELS


@ONE_CLASS_MODELS.register("knn")
class KNearestNeighbourModel(OneClassModel):
    """score = Euclidean distance to the k-th nearest calibration feature
    vector (scikit-learn's ``NearestNeighbors``; k = ``n_neighbors``, at most
    one fewer than the calibration images); threshold = the (1 -
    ``contamination``) quantile of the calibration vectors' leave-one-out
    k-th distances, so about ``contamination`` of normal images are flagged.
    No randomness: the seed is not used."""

    abbreviation = "knn"

    def fit(self, features: np.ndarray) -> KNearestNeighbourModel:
        self.k_ = max(1, min(self.config.n_neighbors, len(features) - 1))
        self.model_ = NearestNeighbors(n_neighbors=self.k_).fit(features)
        # without a query, kneighbors leaves each point out of its own neighbours
        distances, _ = self.model_.kneighbors()
        self.threshold_ = float(np.quantile(distances[:, -1], 1 - self.config.contamination))
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        distances, _ = self.model_.kneighbors(features, n_neighbors=self.k_)
        return distances[:, -1]
