"""What a model learns from normal held-out images, and how.

:class:`Calibration` holds it: the fitted response, the one-class decision
with its conformal scores, the pixel threshold and the self-validation's
record. :func:`fit_calibration` learns it all from calibration images and
scores the conformal ones; :func:`with_conformal` and
:func:`with_decision_settings` replace the parts that can change without
the maps; :func:`describe_false_alarms` says the decision rule in a
reader's terms.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .backend import NoiseBackend
from .config import DecisionConfig, RadarConfig
from .decision import ImageDecision, pixel_threshold
from .evidence_passes import EvidencePasses, Pass, respond_in_order
from .noise_map import Evidence
from .persistence import Conformal
from .response import EvidenceResponse, build_response
from .selection import choose


@dataclass(frozen=True)
class Calibration:
    """What a model learned from normal held-out images; ``conformal_info``
    says where its conformal images came from, ``selection`` how the
    self-validation chose the response, levels and image score (``None``
    when the config named them all)."""

    response: EvidenceResponse
    decision: ImageDecision
    pixel_threshold: float
    conformal_info: dict[str, str] = field(default_factory=dict)
    selection: dict[str, Any] | None = None

    def conformal(self) -> Conformal:
        """The conformal images' features and where they came from, as a model directory stores them."""
        return Conformal(self.decision.conformal_features_, dict(self.conformal_info))


def stamp(source: str) -> dict[str, str]:
    """Where conformal images came from, and when (UTC)."""
    return {"source": source, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def fit_calibration(config: RadarConfig, backend: NoiseBackend, images: list[np.ndarray],
                    conformal: list[np.ndarray], progress: bool,
                    info: dict[str, str]) -> tuple[RadarConfig, Calibration]:
    """Learn the response, the one-class decision and the pixel threshold
    from the normal calibration ``images`` (``(C, H, W)`` in [0, 1]), and
    score the ``conformal`` images for the p-values. Settings the config
    leaves open are chosen first by self-validation
    (:mod:`radar_ad.selection`). Returns the config naming what was chosen,
    and the calibration; ``info["source"]`` says where the conformal images
    came from."""
    learned: EvidenceResponse | None = None
    record: dict[str, Any] | None = None
    known: list[Evidence] | None = None
    if not config.inference.resolved:
        passes = EvidencePasses(backend, config)
        selection = choose(config, images, passes.evidence_each, passes.evidence_of, progress)
        config = config.updated(selection.settings())
        learned, record, known = selection.response, selection.record(), selection.evidence
    passes = EvidencePasses(backend, config)
    response = learned or build_response(config).learn(images, passes.evidence_of, progress)
    chunks: Iterable[Pass] = (passes.chunks(images, response.scales, progress, "calibrating") if known is None
                              else held_passes(known, response.scales))
    held: list[Pass] = []

    def normal_evidence() -> list[Evidence]:
        # a response measured against statistics of these very maps has them
        # all computed (and held, float32) first, and then scored from there
        if not held:
            held.extend([(indices, evidence.to("cpu")) for indices, evidence in groups] for groups in chunks)
        return [evidence for groups in held for _, evidence in groups]

    response.fit(normal_evidence)
    if held:
        chunks = held
    maps, features = [], []
    for groups in chunks:
        for _, anomaly, feats in respond_in_order(response, groups):
            maps.append(anomaly)
            features.append(feats)
    # the conformal images only get scored: nothing above saw them
    conformal_features = passes.features(response, conformal, progress, "scoring conformal images")
    decision = ImageDecision(config.decision, config.seed, response.one_class_model).fit(
        np.stack(features), conformal_features)
    return config, Calibration(response, decision, pixel_threshold(maps, config.decision.pixel_quantile),
                               {**stamp(info["source"]), **info}, record)


def held_passes(evidence: Sequence[Evidence], scales: Sequence[int]) -> list[Pass]:
    """Passes of images whose evidence (at least at ``scales``) is known
    already, one image a group, in order."""
    return [[([i], item.select(scales))] for i, item in enumerate(evidence)]


def with_conformal(calibration: Calibration, config: RadarConfig, conformal_features: np.ndarray,
                   source: str) -> Calibration:
    """``calibration`` with these conformal features (of normal images
    from ``source``) in place of its own, and everything else kept."""
    decision = ImageDecision(config.decision, config.seed, calibration.decision.model).fit(
        calibration.decision.calibration_features_, conformal_features)
    return replace(calibration, decision=decision, conformal_info=stamp(source))


def with_decision_settings(calibration: Calibration, config: RadarConfig) -> Calibration:
    """``calibration`` with its one-class decision refitted, on the stored
    calibration and conformal features, as ``config.decision`` now says."""
    decision = calibration.decision
    model = None if calibration.response.image_score == "features" else decision.model
    return replace(calibration, decision=ImageDecision(config.decision, config.seed, model).fit(
        decision.calibration_features_, decision.conformal_features_))


def describe_false_alarms(config: DecisionConfig, calibration: Calibration) -> dict[str, Any]:
    """The decision rule in a reader's terms: the false-alarm rate (null:
    the contamination rule), the conformal images behind the p-values and
    where they came from, the smallest attainable p-value and, when the
    rule cannot flag anything, the warning."""
    n = calibration.decision.n_conformal
    rate, contamination = config.false_alarm_rate, config.contamination
    confidence, cut = config.false_alarm_confidence, calibration.decision.rate_cut_
    if rate is None:
        rule = f"anomalous above the one-class model's threshold at contamination {contamination:g}"
    elif confidence is None:
        rule = f"anomalous when the p-value is at most {rate:g} ({n} conformal images)"
    else:
        rule = (f"anomalous when the p-value is at most {cut:.4g}: a false-alarm rate of at most {rate:g} with "
                f"probability {confidence:g} over the {n} conformal images")
    return {
        "rate": rate,
        "confidence": confidence,
        "p_value_cut": cut,
        "rule": rule,
        "n_conformal": n,
        "smallest_p_value": 1.0 / (n + 1) if n else None,
        "conformal_source": dict(calibration.conformal_info),
        "warning": calibration.decision.warning(),
    }
