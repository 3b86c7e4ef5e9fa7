"""The image verdict (a one-class model on the features) and the pixel
threshold for the mask, both learned from normal images only.

The one-class model is never pickled: it is rebuilt from the stored
calibration features with a fixed ``random_state``, which gives the very
same model (scikit-learn's fit is deterministic given its seed).
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor
from sklearn.preprocessing import StandardScaler

from .config import DecisionConfig
from .errors import DataError

MIN_CALIBRATION_IMAGES = 5


class ImageDecision:
    """Anomaly score and verdict for image features.

    ``score`` is the negated ``score_samples`` of the one-class model (higher
    means more anomalous) plus how far, in standard deviations of the
    calibration features, the features lie outside the calibration range.
    ``threshold_`` is the model's negated ``offset_``; for features inside the
    calibration range ``score > threshold_`` is exactly scikit-learn's
    ``predict == -1``.

    The range term is there because an IsolationForest cannot extrapolate:
    every point beyond its data lands in the same leaves as the most extreme
    calibration point, so an image with ten times the normal response scored
    no higher than a normal one a little out of range (on the demo the plain
    forest flagged none of 30 defective images). With the term, scores keep
    growing outside the range of normal images, in either direction.
    """

    def __init__(self, config: DecisionConfig, seed: int = 0) -> None:
        self.config = config
        self.seed = seed

    def fit(self, features: np.ndarray) -> ImageDecision:
        """Fit on ``(N, F)`` features of normal calibration images."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[0] < MIN_CALIBRATION_IMAGES:
            raise DataError(f"the one-class model needs at least {MIN_CALIBRATION_IMAGES} "
                            f"normal calibration images, got {features.shape[0]}; "
                            "add training images or raise train.calibration_fraction")
        self.scaler_ = StandardScaler().fit(features)
        scaled = self.scaler_.transform(features)
        self.range_ = (scaled.min(axis=0), scaled.max(axis=0))
        if self.config.one_class_model == "isolation_forest":
            model = IsolationForest(n_estimators=self.config.n_estimators,
                                    contamination=self.config.contamination,
                                    random_state=self.seed)
        else:
            model = LocalOutlierFactor(n_neighbors=min(self.config.n_neighbors, len(scaled) - 1),
                                       contamination=self.config.contamination, novelty=True)
        self.model_ = model.fit(scaled)
        self.threshold_ = float(-self.model_.offset_)
        self.calibration_features_ = features
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        """``(N,)`` anomaly scores for ``(N, F)`` features."""
        scaled = self.scaler_.transform(np.asarray(features, dtype=np.float64))
        low, high = self.range_
        outside = np.clip(scaled - high, 0, None) + np.clip(low - scaled, 0, None)
        return -self.model_.score_samples(scaled) + outside.sum(axis=1)

    def is_anomalous(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold_


def pixel_threshold(response_maps: list[np.ndarray], quantile: float) -> float:
    """The ``quantile`` of all pixel responses of normal calibration images:
    about ``1 - quantile`` of normal pixels end up in a mask."""
    pooled = np.concatenate([np.asarray(m, dtype=np.float32).ravel() for m in response_maps])
    return float(np.quantile(pooled, quantile))
