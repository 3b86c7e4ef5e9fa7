"""The paper's one-class model: an isolation forest."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from sklearn.ensemble import IsolationForest

from ..decision import OneClassModel
from ..registry import ONE_CLASS_MODELS
from ..settings import described, int_in, settings

MAX_ESTIMATORS = 10_000


@settings
class IsolationForestSettings:
    """The isolation forest's own settings."""

    section: ClassVar[str] = "decision.one_class_models.isolation_forest"
    n_estimators: int = described(200, "Trees of the isolation forest.")

    def validate(self) -> None:
        int_in(self.n_estimators, 1, MAX_ESTIMATORS, f"{self.section}.n_estimators")


@ONE_CLASS_MODELS.register("isolation_forest")
class IsolationForestModel(OneClassModel):
    """scikit-learn's ``IsolationForest`` (``n_estimators`` trees, seeded);
    score = negated ``score_samples``, threshold = negated ``offset_``."""

    abbreviation = "if"
    Settings = IsolationForestSettings
    settings: IsolationForestSettings

    def fit(self, features: np.ndarray) -> IsolationForestModel:
        self.model_ = IsolationForest(n_estimators=self.settings.n_estimators,
                                      contamination=self.config.contamination,
                                      random_state=self.seed).fit(features)
        self.threshold_ = float(-self.model_.offset_)
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        return -self.model_.score_samples(features)
