"""The paper's one-class model: an isolation forest."""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import IsolationForest

from ..decision import OneClassModel
from ..registry import ONE_CLASS_MODELS


@ONE_CLASS_MODELS.register("isolation_forest")
class IsolationForestModel(OneClassModel):
    """scikit-learn's ``IsolationForest`` (``n_estimators`` trees, seeded);
    score = negated ``score_samples``, threshold = negated ``offset_``."""

    abbreviation = "if"

    def fit(self, features: np.ndarray) -> IsolationForestModel:
        self.model_ = IsolationForest(n_estimators=self.config.n_estimators,
                                      contamination=self.config.contamination,
                                      random_state=self.seed).fit(features)
        self.threshold_ = float(-self.model_.offset_)
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        return -self.model_.score_samples(features)
