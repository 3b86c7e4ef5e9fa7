"""The image verdict (a one-class model on the features) and the pixel
threshold for the mask, both learned from normal images only.

The one-class model is a plug-in (:data:`~radar_ad.registry.ONE_CLASS_MODELS`,
one module each in ``radar_ad/one_class/``). It is never pickled: it is
rebuilt from the stored calibration features with a fixed seed, which gives
the very same model (scikit-learn's fit is deterministic given its seed).

:func:`is_anomalous` is THE verdict rule: RADAR, every baseline and every
front end (detect, watch, serve) decide with it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from sklearn.preprocessing import StandardScaler

from .config import DecisionConfig
from .errors import DataError
from .registry import ONE_CLASS_MODELS

MIN_CALIBRATION_IMAGES = 5


def is_anomalous(score: Any, threshold: float) -> Any:
    """The verdict rule: anomalous when the score is above the threshold
    (elementwise for arrays)."""
    return score > threshold


class OneClassModel:
    """Base of every registered one-class model: fitted on ``(N, F)``
    standardised features of normal images, it scores new ones (higher = more
    anomalous) and sets ``threshold_`` from ``contamination``.

    ``__init__`` stores settings; :meth:`fit` learns and returns ``self``.
    ``abbreviation`` is the short name tables use (``radar_<abbreviation>``
    in ``radar benchmark``); it defaults to the registered name.
    """

    name: ClassVar[str] = ""
    abbreviation: ClassVar[str] = ""

    def __init__(self, config: DecisionConfig, seed: int = 0) -> None:
        self.config = config
        self.seed = seed

    def fit(self, features: np.ndarray) -> OneClassModel:
        raise NotImplementedError

    def score(self, features: np.ndarray) -> np.ndarray:
        """``(N,)`` anomaly scores for ``(N, F)`` standardised features."""
        raise NotImplementedError

    threshold_: float


class ImageDecision:
    """Anomaly score and verdict for image features.

    ``score`` is the one-class model's score (higher means more anomalous)
    plus how far, in standard deviations of the calibration features, the
    features lie outside the calibration range. ``threshold_`` is the model's
    own threshold; for features inside the calibration range ``score >
    threshold_`` is exactly the one-class model's verdict.

    The range term is there because an IsolationForest cannot extrapolate:
    every point beyond its data lands in the same leaves as the most extreme
    calibration point, so an image with ten times the normal response scored
    no higher than a normal one a little out of range (README, "Score and
    threshold"). With the term, scores keep growing outside the range of
    normal images, in either direction.
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
        model_class = ONE_CLASS_MODELS.get(self.config.one_class_model)
        self.model_: OneClassModel = model_class(self.config, self.seed).fit(scaled)
        self.threshold_ = float(self.model_.threshold_)
        self.calibration_features_ = features
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        """``(N,)`` anomaly scores for ``(N, F)`` features."""
        scaled = self.scaler_.transform(np.asarray(features, dtype=np.float64))
        low, high = self.range_
        outside = np.clip(scaled - high, 0, None) + np.clip(low - scaled, 0, None)
        return self.model_.score(scaled) + outside.sum(axis=1)

    def is_anomalous(self, scores: np.ndarray) -> np.ndarray:
        return is_anomalous(np.asarray(scores), self.threshold_)


def pixel_threshold(response_maps: list[np.ndarray], quantile: float) -> float:
    """The ``quantile`` of all pixel responses of normal calibration images:
    about ``1 - quantile`` of normal pixels end up in a mask."""
    pooled = np.concatenate([np.asarray(m, dtype=np.float32).ravel() for m in response_maps])
    return float(np.quantile(pooled, quantile))
