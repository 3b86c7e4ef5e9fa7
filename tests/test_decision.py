import numpy as np
import pytest

from radar_ad.config import DecisionConfig
from radar_ad.decision import ImageDecision, non_finite_scores, pixel_threshold
from radar_ad.errors import ConfigError, DataError, NonFiniteError
from radar_ad.registry import ONE_CLASS_MODELS


@pytest.mark.parametrize("model", ONE_CLASS_MODELS.names())
def test_outliers_score_higher_and_threshold_matches_contamination(model):
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(200, 2))
    rule = DecisionConfig(one_class_model=model, contamination=0.05, false_alarm_rate=None)  # the model's own threshold
    decision = ImageDecision(rule, 0).fit(normal)
    flagged = decision.is_anomalous(decision.score(normal)).mean()
    assert 0.02 <= flagged <= 0.08
    far = np.array([[8.0, 8.0], [-6.0, 7.0]])
    assert np.all(decision.is_anomalous(decision.score(far)))
    assert decision.score(far).min() > decision.score(normal).max() - 1e-9


def test_refit_from_stored_features_is_identical():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(30, 2))
    a = ImageDecision(DecisionConfig(), 3).fit(features)
    b = ImageDecision(DecisionConfig(), 3).fit(a.calibration_features_.copy())
    probe = rng.normal(size=(50, 2)) * 3
    np.testing.assert_array_equal(a.score(probe), b.score(probe))
    assert a.threshold_ == b.threshold_


def test_decide_gives_the_rules_verdict_and_p_value_and_no_verdict_from_a_non_finite_score():
    rng = np.random.default_rng(4)
    decision = ImageDecision(DecisionConfig(), 0).fit(rng.normal(size=(30, 2)), rng.normal(size=(19, 2)))
    probe = np.array([[0.0, 0.0], [9.0, 9.0], [np.nan, 0.0]])
    with pytest.raises(NonFiniteError, match="image 3 of 3"):
        decision.decide(probe)  # decision.non_finite "error", the default
    normal, far, broken = decision.decide(probe, non_finite="anomalous")
    scores = decision.score(probe[:2])
    assert (normal.score, far.score) == tuple(scores.tolist())
    assert (normal.is_anomalous, far.is_anomalous) == tuple(decision.is_anomalous(scores).tolist()) == (False, True)
    assert [normal.p_value, far.p_value] == decision.p_values(scores).tolist()
    assert broken.is_anomalous and broken.p_value is None and np.isnan(broken.score)
    assert non_finite_scores(np.array([1.0, np.inf]), "anomalous").tolist() == [False, True]


def test_too_few_calibration_images():
    with pytest.raises(DataError, match="at least"):
        ImageDecision(DecisionConfig()).fit(np.zeros((3, 2)))


def test_pixel_threshold_is_a_quantile_over_all_pixels():
    maps = [np.arange(100, dtype=np.float32).reshape(10, 10), np.arange(100, 200).reshape(10, 10)]
    assert pixel_threshold(maps, 0.5) == pytest.approx(99.5)


def test_scores_keep_growing_beyond_the_calibration_range():
    # A forest alone gives every point beyond its data the score of the most
    # extreme calibration point; here that point is a low outlier, so a plain
    # forest would rank a huge response below it and call it normal.
    rng = np.random.default_rng(2)
    calibration = np.vstack([rng.normal(10, 0.5, size=(19, 2)), [[7.0, 8.0]]])
    decision = ImageDecision(DecisionConfig(false_alarm_rate=None), 0).fit(calibration)
    far = np.array([[10.5, 14.0], [11.0, 20.0], [12.0, 40.0]])
    scores = decision.score(far)
    assert np.all(np.diff(scores) > 0)
    assert np.all(decision.is_anomalous(scores))
    inside = decision.score(calibration)
    plain = decision.model_.score(decision.scaler_.transform(calibration))
    np.testing.assert_allclose(inside, plain)  # no change inside the range


def test_unknown_one_class_model_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="decision.one_class_model must be one of") as error:
        DecisionConfig(one_class_model="svm")
    assert all(name in str(error.value) for name in ONE_CLASS_MODELS.names())
