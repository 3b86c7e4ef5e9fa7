"""The image verdict (a one-class model on the features, read as a conformal
p-value) and the pixel threshold for the mask, all learned from normal images only.

The one-class model is a plug-in (:data:`~radar_ad.registry.ONE_CLASS_MODELS`,
one module each in ``radar_ad/one_class/``). It is never pickled: it is
rebuilt from the stored calibration features with a fixed seed, which gives
the very same model (scikit-learn's fit is deterministic given its seed).

:func:`is_anomalous` is THE verdict rule: RADAR, every baseline and every
front end (detect, watch, serve) decide with it. :meth:`ImageDecision.decide`
applies it to image features together with the conformal p-value and the
non-finite policy (:func:`non_finite_scores`).

The conformal part: the one-class scores of normal images that nothing was
fitted on (the conformal split) make every new score a p-value
``(1 + #{conformal scores >= score}) / (n + 1)``. On normal images
exchangeable with the conformal ones, ``P(p <= alpha) <= alpha``: the rule
"anomalous when ``p <= alpha``" has a false-alarm rate of at most alpha, and
it is the same rule as ``score > conformal_threshold(scores, alpha)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy.special import betainc
from sklearn.preprocessing import StandardScaler

from .config import DecisionConfig
from .errors import DataError, NonFiniteError
from .registry import ONE_CLASS_MODELS

MIN_CALIBRATION_IMAGES = 5


# slack for alpha * (n + 1) landing a rounding error below an integer
_EPSILON = 1e-9


def is_anomalous(score: Any, threshold: float) -> Any:
    """The verdict rule: anomalous when the score is above the threshold
    (elementwise for arrays)."""
    return score > threshold


def non_finite_scores(scores: np.ndarray, policy: str) -> np.ndarray:
    """Which of the ``(N,)`` scores are not finite (NaN or infinite), for
    the policy ``decision.non_finite`` to flag: with ``"anomalous"`` they are
    returned (and flagged); with ``"error"`` one raises
    :class:`NonFiniteError`: a non-finite score never becomes a verdict,
    least of all "normal"."""
    bad = ~np.isfinite(scores)
    if bad.any() and policy == "error":
        where = "" if len(scores) == 1 else f" (image {int(np.argmax(bad)) + 1} of {len(scores)})"
        raise NonFiniteError(f"the anomaly score is {scores[bad][0]}{where}, not a number a verdict can come "
                             "from: the image or the model is broken (decision.non_finite: anomalous flags "
                             "such images instead)")
    return bad


def conformal_p_values(reference: np.ndarray, scores: Any) -> np.ndarray:
    """``(1 + #{reference >= score}) / (n + 1)`` for each score (NaN for a
    non-finite score): the conformal p-value against ``reference``, the
    scores of ``n`` normal images nothing was fitted on."""
    ordered = np.sort(np.asarray(reference, dtype=np.float64).ravel())
    values = np.asarray(scores, dtype=np.float64)
    at_least = len(ordered) - np.searchsorted(ordered, values, side="left")
    p = (1.0 + at_least) / (len(ordered) + 1.0)
    return np.where(np.isfinite(values), p, np.nan)


def conformal_threshold(reference: np.ndarray, alpha: float) -> float:
    """The score threshold of the rule "p-value <= alpha": ``score >
    threshold`` exactly when :func:`conformal_p_values` gives at most
    ``alpha``. ``inf`` when ``alpha < 1 / (n + 1)``: no p-value is that small,
    the rule flags nothing (:func:`smallest_false_alarm_rate`)."""
    ordered = np.sort(np.asarray(reference, dtype=np.float64).ravel())[::-1]
    allowed = math.floor(alpha * (len(ordered) + 1) + _EPSILON) - 1  # most reference scores >= a flagged score
    if allowed >= len(ordered):
        return -math.inf  # alpha >= 1: every p-value is small enough
    return float(ordered[allowed]) if allowed >= 0 else math.inf


def smallest_false_alarm_rate(n_conformal: int) -> float:
    """The smallest p-value, and so the smallest alpha that can flag
    anything, with ``n_conformal`` conformal images: ``1 / (n + 1)``."""
    return 1.0 / (n_conformal + 1)


def conformal_images_needed(alpha: float) -> int:
    """The fewest conformal images with which the rule ``p <= alpha`` can
    flag anything: the smallest n with ``1 / (n + 1) <= alpha``."""
    return max(0, math.ceil(1.0 / alpha - 1 - _EPSILON))


def confident_rate(alpha: float, n_conformal: int, confidence: float) -> float:
    """The p-value cut that keeps the false-alarm rate at most ``alpha``
    with probability ``confidence`` over the draw of the ``n`` conformal
    images, not only on average.

    The rule ``p <= k / (n + 1)`` flags a score above the k-th largest
    conformal score; the share of normal images above it is Beta(k, n + 1 -
    k) distributed (order statistics of exchangeable scores). The cut is the
    largest k <= alpha (n + 1) with ``P(Beta(k, n + 1 - k) <= alpha) >=
    confidence``; 0 (flag nothing) when even k = 1 misses."""
    n = int(n_conformal)
    for k in range(min(n, math.floor(alpha * (n + 1) + _EPSILON)), 0, -1):
        if betainc(k, n + 1 - k, alpha) >= confidence:
            return k / (n + 1)
    return 0.0


def confident_images_needed(alpha: float, confidence: float) -> int:
    """The fewest conformal images with which :func:`confident_rate` can flag
    anything: ``P(Beta(1, n) <= alpha) = 1 - (1 - alpha)^n >= confidence``."""
    return max(1, math.ceil(math.log1p(-confidence) / math.log1p(-alpha) - _EPSILON))


def false_alarm_warning(alpha: float | None, n_conformal: int, confidence: float | None = None) -> str | None:
    """The one-line warning when ``alpha`` is below what ``n_conformal``
    images can attain (the rule would flag nothing), else ``None``."""
    if alpha is not None and confidence is not None and confident_rate(alpha, n_conformal, confidence) == 0:
        return (f"decision.false_alarm_confidence {confidence:g} at decision.false_alarm_rate {alpha:g} needs at "
                f"least {confident_images_needed(alpha, confidence)} conformal images to flag anything; with "
                f"{n_conformal} no image can be flagged (`radar calibrate-false-alarms` with a larger folder, or a "
                "lower confidence)")
    if alpha is None or alpha + _EPSILON >= smallest_false_alarm_rate(n_conformal):
        return None
    return (f"decision.false_alarm_rate {alpha:g} is below 1/(n+1) = {smallest_false_alarm_rate(n_conformal):.3g} "
            f"for the {n_conformal} conformal images: no image can be flagged; it needs at least "
            f"{conformal_images_needed(alpha)} (train with more normal images or a larger "
            "train.conformal_size, or `radar calibrate-false-alarms` with a larger folder)")


class OneClassModel:
    """Base of every registered one-class model: fitted on ``(N, F)``
    standardised features of normal images, it scores new ones (higher = more
    anomalous) and sets ``threshold_`` from ``contamination``.

    ``__init__`` stores settings: the shared ones of ``config`` (the
    ``decision`` section), and the model's own (``settings``) when its class
    names a ``Settings`` section (under
    ``decision.one_class_models.<name>``); :meth:`fit` learns and returns
    ``self``. ``abbreviation`` is the short name tables use
    (``radar_<abbreviation>`` in ``radar benchmark``); it defaults to the
    registered name.
    """

    name: ClassVar[str] = ""
    abbreviation: ClassVar[str] = ""
    # its score keeps growing beyond the calibration features (no range term needed)
    extrapolates: ClassVar[bool] = False
    Settings: ClassVar[type | None] = None

    def __init__(self, config: DecisionConfig, seed: int = 0) -> None:
        self.config = config
        self.seed = seed
        self.settings: Any = config.one_class_models.of(self)

    def fit(self, features: np.ndarray) -> OneClassModel:
        raise NotImplementedError

    def score(self, features: np.ndarray) -> np.ndarray:
        """``(N,)`` anomaly scores for ``(N, F)`` standardised features."""
        raise NotImplementedError

    threshold_: float


class FeatureScore(OneClassModel):
    """The one image feature is the anomaly score itself (a map statistic,
    ``inference.image_score`` ``max`` or ``robust_max``): nothing to fit;
    the contamination threshold is the calibration scores' ``1 -
    contamination`` quantile."""

    name = "score"
    extrapolates = True

    def fit(self, features: np.ndarray) -> FeatureScore:
        if features.shape[1] != 1:
            raise DataError(f"a feature that is the score must be one column, got {features.shape[1]}")
        self.threshold_ = float(np.quantile(features[:, 0], 1 - self.config.contamination))
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features[:, 0], dtype=np.float64)


def one_class_class(name: str) -> type[OneClassModel]:
    """A registered one-class model, or :class:`FeatureScore` for ``"score"``."""
    return FeatureScore if name == FeatureScore.name else ONE_CLASS_MODELS.get(name)


@dataclass(frozen=True)
class Verdict:
    """One image's decision (:meth:`ImageDecision.decide`): its anomaly
    ``score``, whether it ``is_anomalous``, and its conformal ``p_value``
    (``None`` for a decision without conformal images, or a non-finite score
    the policy flagged)."""

    score: float
    is_anomalous: bool
    p_value: float | None


class ImageDecision:
    """Anomaly score and verdict for image features.

    ``score`` is the one-class model's score (higher means more anomalous)
    plus how far, in standard deviations of the calibration features, the
    features lie outside the calibration range. ``threshold_`` is the
    conformal threshold for ``config.false_alarm_rate`` (``score >
    threshold_`` exactly when the p-value is at most the rate), or, with the
    rate null, the one-class model's own threshold (``model_threshold_``;
    for features inside the calibration range ``score > threshold_`` is then
    exactly the one-class model's verdict). ``model``: the one-class model's
    name (default the config's; ``"score"`` when the one feature is the
    score itself, which needs no range term).

    The range term is there because an IsolationForest cannot extrapolate:
    every point beyond its data lands in the same leaves as the most extreme
    calibration point, so without it an image with ten times the normal
    response scores no higher than a normal one a little out of range. With
    the term, scores keep growing outside the range of normal images, in
    either direction.
    """

    def __init__(self, config: DecisionConfig, seed: int = 0, model: str | None = None) -> None:
        self.config = config
        self.seed = seed
        self.model = model or config.one_class_model

    def fit(self, features: np.ndarray, conformal_features: np.ndarray | None = None) -> ImageDecision:
        """Fit on ``(N, F)`` features of normal calibration images; score the
        ``(M, F)`` features of the conformal images (held out from everything)
        for p-values and the false-alarm rule."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[0] < MIN_CALIBRATION_IMAGES:
            raise DataError(f"the one-class model needs at least {MIN_CALIBRATION_IMAGES} "
                            f"normal calibration images, got {features.shape[0]}; "
                            "add training images or raise train.calibration_fraction")
        _check_finite(features, "calibration")
        self.scaler_ = StandardScaler().fit(features)
        scaled = self.scaler_.transform(features)
        self.range_ = (scaled.min(axis=0), scaled.max(axis=0))
        self.model_: OneClassModel = one_class_class(self.model)(self.config, self.seed).fit(scaled)
        self.model_threshold_ = float(self.model_.threshold_)
        self.calibration_features_ = features
        return self.with_conformal(conformal_features)

    def with_conformal(self, conformal_features: np.ndarray | None) -> ImageDecision:
        """Set (or, with new images of the line, replace) the conformal
        features and the threshold that follows from them; the one-class
        model is kept. Returns ``self``."""
        width = self.calibration_features_.shape[1]
        conformal = np.zeros((0, width)) if conformal_features is None else np.asarray(conformal_features,
                                                                                       dtype=np.float64)
        if conformal.ndim != 2 or conformal.shape[1] != width:
            raise DataError(f"conformal features must have {width} columns (one per image feature), "
                            f"got shape {conformal.shape}")
        _check_finite(conformal, "conformal")
        self.conformal_features_ = conformal
        self.conformal_scores_ = np.sort(self.score(conformal)) if len(conformal) else np.zeros(0)
        alpha, confidence = self.config.false_alarm_rate, self.config.false_alarm_confidence
        if alpha is not None and confidence is not None:
            alpha = confident_rate(alpha, self.n_conformal, confidence)
        self.rate_cut_ = alpha  # the verdict is p <= rate_cut_ (None: the one-class model's threshold)
        self.threshold_ = (self.model_threshold_ if alpha is None
                           else conformal_threshold(self.conformal_scores_, alpha) if alpha > 0 else math.inf)
        return self

    @property
    def n_conformal(self) -> int:
        return len(self.conformal_scores_)

    def p_values(self, scores: np.ndarray) -> np.ndarray | None:
        """Conformal p-values of image scores, or ``None`` for a model
        without conformal images."""
        return conformal_p_values(self.conformal_scores_, scores) if self.n_conformal else None

    def warning(self) -> str | None:
        """A line to show when the false-alarm rule cannot flag anything."""
        return false_alarm_warning(self.config.false_alarm_rate, self.n_conformal,
                                   self.config.false_alarm_confidence)

    def score(self, features: np.ndarray) -> np.ndarray:
        """``(N,)`` anomaly scores for ``(N, F)`` features; NaN for a row
        with a non-finite feature (which no one-class model may score)."""
        features = np.asarray(features, dtype=np.float64)
        finite = np.isfinite(features).all(axis=1) if features.ndim == 2 else np.zeros(0, dtype=bool)
        scores = np.full(len(features), np.nan)
        if finite.any():
            scaled = self.scaler_.transform(features[finite])
            scores[finite] = self.model_.score(scaled)
            if not self.model_.extrapolates:
                low, high = self.range_
                outside = np.clip(scaled - high, 0, None) + np.clip(low - scaled, 0, None)
                scores[finite] += outside.sum(axis=1)
        return scores

    def is_anomalous(self, scores: np.ndarray) -> np.ndarray:
        return is_anomalous(np.asarray(scores), self.threshold_)

    def decide(self, features: np.ndarray, non_finite: str | None = None) -> list[Verdict]:
        """One :class:`Verdict` per row of the ``(N, F)`` features: the
        score (one call for all rows: a forest has a large per-call
        overhead), the verdict rule against ``threshold_`` and the p-value,
        with the non-finite policy ``non_finite`` (:func:`non_finite_scores`;
        default the config's, which a model may change without a refit)."""
        scores = self.score(features)
        flagged = non_finite_scores(scores, non_finite or self.config.non_finite)
        p_values = self.p_values(scores)
        return [Verdict(score, bool(is_anomalous(score, self.threshold_) or flagged[i]),
                        None if p_values is None or flagged[i] else float(p_values[i]))
                for i, score in enumerate(scores.tolist())]


def _check_finite(features: np.ndarray, which: str) -> None:
    """Refuse NaN or infinite features of normal images: a model fitted on
    them would score every image NaN."""
    if not np.isfinite(features).all():
        bad = int((~np.isfinite(features).all(axis=1)).sum())
        raise NonFiniteError(f"{bad} of the {len(features)} {which} images have non-finite features "
                             "(NaN or infinite): the network or the images are broken")


def pixel_threshold(response_maps: list[np.ndarray], quantile: float) -> float:
    """The ``quantile`` of all pixel responses of normal calibration images:
    about ``1 - quantile`` of normal pixels end up in a mask."""
    pooled = np.concatenate([np.asarray(m, dtype=np.float32).ravel() for m in response_maps])
    if not np.isfinite(pooled).all():
        raise NonFiniteError("the calibration images' anomaly maps hold NaN or infinite values: "
                             "the network or the images are broken")
    return float(np.quantile(pooled, quantile))
