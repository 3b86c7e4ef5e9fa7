"""The conformal decision: p-values, the false-alarm threshold, its guarantee
on exchangeable normal scores, the small-sample warning and the split that
keeps the conformal images out of everything else."""

from __future__ import annotations

import math

import numpy as np
import pytest

from radar_ad.config import DecisionConfig, RadarConfig
from radar_ad.decision import (
    ImageDecision,
    conformal_images_needed,
    conformal_p_values,
    conformal_threshold,
    false_alarm_warning,
    smallest_false_alarm_rate,
)
from radar_ad.errors import ConfigError, DataError
from radar_ad.splits import three_way_split


def test_p_values_follow_the_formula_with_ties():
    reference = np.array([1.0, 2.0, 2.0, 3.0, 5.0])
    scores = np.array([0.0, 1.0, 2.0, 2.5, 5.0, 6.0, np.nan, np.inf])
    brute = [(1 + sum(r >= s for r in reference)) / (len(reference) + 1) for s in scores[:6]]
    p = conformal_p_values(reference, scores)
    np.testing.assert_allclose(p[:6], brute)
    assert np.isnan(p[6]) and np.isnan(p[7])  # a non-finite score gets no p-value


def test_threshold_is_the_p_value_rule_for_every_alpha():
    rng = np.random.default_rng(0)
    for n in (1, 9, 19, 20, 57, 200):
        reference = np.round(rng.normal(size=n), 1)  # rounding makes ties
        scores = np.r_[np.round(rng.normal(size=500), 1), reference]
        p = conformal_p_values(reference, scores)
        for alpha in (0.005, 0.01, 0.05, 0.1, 0.29, 0.5, 1 / (n + 1), 3 / (n + 1)):
            flagged_by_threshold = scores > conformal_threshold(reference, alpha)
            np.testing.assert_array_equal(flagged_by_threshold, p <= alpha + 1e-12, err_msg=f"n={n} alpha={alpha}")


def test_too_few_conformal_images_flag_nothing_and_warn():
    assert conformal_threshold(np.arange(18.0), 0.05) == math.inf
    assert conformal_threshold(np.arange(19.0), 0.05) == 18.0  # the largest: p = 1/20
    assert conformal_images_needed(0.05) == 19 and conformal_images_needed(0.01) == 99
    assert conformal_images_needed(0.1) == 9 and smallest_false_alarm_rate(19) == 0.05
    assert false_alarm_warning(0.05, 19) is None and false_alarm_warning(None, 0) is None
    line = false_alarm_warning(0.01, 40)
    assert line is not None and "needs at least 99" in line and "\n" not in line


def _false_alarm_rates(draw, alpha: float, n_conformal: int, n_test: int, repeats: int, seed: int) -> np.ndarray:
    """Observed false-alarm rates over many random conformal/test splits of
    normal scores; ``draw(rng, n)`` gives (conformal scores, test scores)."""
    rng = np.random.default_rng(seed)
    rates = np.empty(repeats)
    for r in range(repeats):
        conformal, test = draw(rng, n_conformal, n_test)
        rates[r] = np.mean(test > conformal_threshold(conformal, alpha))
    return rates


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1])
def test_guarantee_holds_over_repeated_splits(alpha):
    # exchangeable normal scores (heavy-tailed, to be sure nothing assumes a shape)
    def exchangeable(rng, n_conformal, n_test):
        pool = rng.standard_t(3, size=n_conformal + n_test)
        return pool[:n_conformal], pool[n_conformal:]

    n_conformal, n_test, repeats = 120, 200, 1500
    rates = _false_alarm_rates(exchangeable, alpha, n_conformal, n_test, repeats, seed=1)
    # E[rate] = floor(alpha (n + 1)) / (n + 1) <= alpha; three standard errors of slack
    expected = math.floor(alpha * (n_conformal + 1)) / (n_conformal + 1)
    assert rates.mean() <= alpha + 3 * rates.std() / math.sqrt(repeats)
    assert rates.mean() == pytest.approx(expected, abs=4 * rates.std() / math.sqrt(repeats) + 1e-9)


def test_guarantee_fails_when_the_reference_was_fitted_on():
    # the same check on scores of images the model was fitted on (smaller than
    # a new normal image's): the rate exceeds alpha, so the check above can fail
    def fitted_on(rng, n_conformal, n_test):
        return rng.normal(size=n_conformal) * 0.7, rng.normal(size=n_test)

    rates = _false_alarm_rates(fitted_on, 0.05, 120, 200, 300, seed=2)
    assert rates.mean() > 0.05 + 3 * rates.std() / math.sqrt(300)


def test_decision_reads_its_threshold_from_the_conformal_scores():
    rng = np.random.default_rng(0)
    calibration, conformal = rng.normal(size=(30, 2)), rng.normal(size=(39, 2))
    decision = ImageDecision(DecisionConfig(false_alarm_rate=0.05), 0).fit(calibration, conformal)
    assert decision.n_conformal == 39
    assert decision.threshold_ == conformal_threshold(decision.score(conformal), 0.05)
    scores = decision.score(rng.normal(size=(200, 2)))
    np.testing.assert_array_equal(decision.p_values(scores) <= 0.05, decision.is_anomalous(scores))

    contamination = ImageDecision(DecisionConfig(false_alarm_rate=None), 0).fit(calibration, conformal)
    assert contamination.threshold_ == contamination.model_threshold_ == decision.model_threshold_
    assert contamination.p_values(scores) is not None  # p-values whatever the rule

    without = ImageDecision(DecisionConfig(false_alarm_rate=0.05), 0).fit(calibration)
    assert without.p_values(scores) is None and without.threshold_ == math.inf and without.warning()
    with pytest.raises(DataError, match="2 columns"):
        decision.with_conformal(np.zeros((5, 3)))


def test_false_alarm_settings_are_bounded_and_nullable():
    config = RadarConfig().updated({"decision.false_alarm_rate": None, "train.conformal_size": 30})
    assert RadarConfig.from_dict(config.to_dict()) == config
    assert config.decision.false_alarm_rate is None
    for key, bad in (("decision.false_alarm_rate", 0), ("decision.false_alarm_rate", 0.7),
                     ("decision.false_alarm_rate", "often"), ("train.conformal_fraction", 0.9),
                     ("train.conformal_size", -1), ("train.conformal_size", 10**9)):
        with pytest.raises(ConfigError, match=key.split(".")[1]):
            RadarConfig().updated({key: bad})


def test_split_keeps_the_conformal_images_out_of_everything():
    config = RadarConfig().updated({"train.calibration_fraction": 0.2, "train.conformal_fraction": 0.25})
    split = three_way_split(100, config)
    assert (len(split.train), len(split.calibration), len(split.conformal)) == (55, 20, 25)
    assert not set(split.conformal) & (set(split.train) | set(split.calibration))
    assert not set(split.train) & set(split.calibration)
    assert sorted(split.train + split.calibration + split.conformal) == list(range(100))

    paper = three_way_split(100, config.updated({"train.calibrate_on_training": True}))
    assert paper.train == paper.calibration and paper.conformal == split.conformal

    # no conformal split: exactly the two-way split of radar-ad 0.3 (same seeds, same images)
    none = three_way_split(100, config.updated({"train.conformal_fraction": 0.0}))
    order = np.random.default_rng(config.seed).permutation(100)
    assert none.conformal == [] and none.calibration == sorted(order[:20].tolist())

    exact = three_way_split(100, config.updated({"train.conformal_size": 40}))
    assert len(exact.conformal) == 40
    with pytest.raises(DataError, match="conformal_size"):
        three_way_split(30, config.updated({"train.conformal_size": 25}))
    # a small folder: the fraction shrinks to what leaves enough to train and calibrate
    small = three_way_split(8, config)
    assert len(small.calibration) == 5 and len(small.train) >= 1
