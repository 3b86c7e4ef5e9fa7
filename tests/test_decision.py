import numpy as np
import pytest

from radar_ad.config import DecisionConfig
from radar_ad.decision import ImageDecision, pixel_threshold
from radar_ad.errors import DataError


@pytest.mark.parametrize("model", ["isolation_forest", "local_outlier_factor"])
def test_outliers_score_higher_and_threshold_matches_contamination(model):
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(200, 2))
    decision = ImageDecision(DecisionConfig(one_class_model=model, contamination=0.05), 0).fit(normal)
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


def test_too_few_calibration_images():
    with pytest.raises(DataError, match="at least"):
        ImageDecision(DecisionConfig()).fit(np.zeros((3, 2)))


def test_pixel_threshold_is_a_quantile_over_all_pixels():
    maps = [np.arange(100, dtype=np.float32).reshape(10, 10), np.arange(100, 200).reshape(10, 10)]
    assert pixel_threshold(maps, 0.5) == pytest.approx(99.5)
