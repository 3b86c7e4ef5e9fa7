"""The authors' later one-class model: the local outlier factor."""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import LocalOutlierFactor

from ..decision import OneClassModel
from ..registry import ONE_CLASS_MODELS


@ONE_CLASS_MODELS.register("local_outlier_factor")
class LocalOutlierFactorModel(OneClassModel):
    """scikit-learn's ``LocalOutlierFactor`` in novelty mode (``n_neighbors``,
    at most one fewer than the calibration images); score = negated
    ``score_samples``, threshold = negated ``offset_``."""

    abbreviation = "lof"

    def fit(self, features: np.ndarray) -> LocalOutlierFactorModel:
        self.model_ = LocalOutlierFactor(n_neighbors=min(self.config.n_neighbors, len(features) - 1),
                                         contamination=self.config.contamination, novelty=True).fit(features)
        self.threshold_ = float(-self.model_.offset_)
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        return -self.model_.score_samples(features)
