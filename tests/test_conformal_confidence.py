"""The false-alarm rate with a confidence (``decision.false_alarm_confidence``):
over the draw of the conformal images, the rate holds with probability
1 - gamma, not only on average; the check below fails on the average rule,
which keeps the rate only on average; too few conformal images warn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import betainc
from scipy.stats import norm

from radar_ad.config import DecisionConfig, RadarConfig
from radar_ad.decision import (
    ImageDecision,
    confident_images_needed,
    confident_rate,
    conformal_threshold,
    false_alarm_warning,
)
from radar_ad.errors import ConfigError


def _exceedance(alpha: float, confidence: float | None, n: int, repeats: int, seed: int) -> np.ndarray:
    """The true false-alarm rate (normal scores are N(0, 1): the share above
    the threshold is exact) of the rule, for ``repeats`` conformal draws."""
    rng = np.random.default_rng(seed)
    cut = alpha if confidence is None else confident_rate(alpha, n, confidence)
    rates = np.empty(repeats)
    for r in range(repeats):
        threshold = conformal_threshold(rng.normal(size=n), cut) if cut > 0 else math.inf
        rates[r] = norm.sf(threshold)
    return rates


@pytest.mark.parametrize("alpha, confidence, n", [(0.05, 0.9, 100), (0.1, 0.95, 60), (0.01, 0.9, 400)])
def test_the_rate_holds_with_the_stated_confidence(alpha, confidence, n):
    repeats = 4000
    rates = _exceedance(alpha, confidence, n, repeats, seed=n)
    missed = np.mean(rates > alpha)  # draws where the rate is above alpha
    assert missed <= (1 - confidence) + 3 * math.sqrt(confidence * (1 - confidence) / repeats)
    assert rates.mean() <= alpha  # and so on average too
    # the exact Beta law behind the cut: P(rate > alpha) is what it promised
    k = round(confident_rate(alpha, n, confidence) * (n + 1))
    assert k >= 1 and missed == pytest.approx(1 - betainc(k, n + 1 - k, alpha),
                                              abs=4 * math.sqrt(confidence * (1 - confidence) / repeats))


def test_the_check_fails_on_the_average_rule():
    # the same check on the rule without the confidence: its rate is alpha on
    # average, and above alpha on close to half the draws
    alpha, confidence, n, repeats = 0.05, 0.9, 100, 4000
    rates = _exceedance(alpha, None, n, repeats, seed=7)
    assert np.mean(rates > alpha) > (1 - confidence) + 3 * math.sqrt(confidence * (1 - confidence) / repeats)


def test_too_few_conformal_images_flag_nothing_and_warn():
    needed = confident_images_needed(0.05, 0.9)
    assert needed == 45  # 1 - 0.95^45 >= 0.9 > 1 - 0.95^44
    assert confident_rate(0.05, needed - 1, 0.9) == 0.0 and confident_rate(0.05, needed, 0.9) == 1 / (needed + 1)
    line = false_alarm_warning(0.05, 30, 0.9)
    assert line is not None and "needs at least 45" in line and "\n" not in line
    assert false_alarm_warning(0.05, 200, 0.9) is None


def test_the_decision_uses_the_cut_and_the_setting_is_bounded():
    rng = np.random.default_rng(0)
    calibration, conformal = rng.normal(size=(30, 2)), rng.normal(size=(150, 2))
    plain = ImageDecision(DecisionConfig(false_alarm_rate=0.05), 0).fit(calibration, conformal)
    sure = ImageDecision(DecisionConfig(false_alarm_rate=0.05, false_alarm_confidence=0.9), 0).fit(
        calibration, conformal)
    assert sure.rate_cut_ == confident_rate(0.05, 150, 0.9) < plain.rate_cut_ == 0.05
    assert sure.threshold_ > plain.threshold_
    scores = sure.score(rng.normal(size=(300, 2)))
    np.testing.assert_array_equal(sure.p_values(scores) <= sure.rate_cut_ + 1e-12, sure.is_anomalous(scores))
    few = ImageDecision(DecisionConfig(false_alarm_rate=0.05, false_alarm_confidence=0.9), 0).fit(
        calibration, conformal[:20])
    assert few.threshold_ == math.inf and "needs at least 45" in few.warning()
    config = RadarConfig().updated({"decision.false_alarm_confidence": 0.95})
    assert RadarConfig.from_dict(config.to_dict()) == config
    for bad in (0.2, 1.0, "sure", True):
        with pytest.raises(ConfigError, match="false_alarm_confidence"):
            RadarConfig().updated({"decision.false_alarm_confidence": bad})
