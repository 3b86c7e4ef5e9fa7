"""The k-nearest-neighbour one-class model against an independent numpy
computation of its definition."""

from __future__ import annotations

import numpy as np
import pytest

from radar_ad.config import DecisionConfig
from radar_ad.one_class.knn import KNearestNeighbourModel


def _kth_distances(queries: np.ndarray, reference: np.ndarray, k: int, leave_out: bool) -> np.ndarray:
    distances = np.sqrt(((queries[:, None, :] - reference[None, :, :]) ** 2).sum(-1))
    if leave_out:
        np.fill_diagonal(distances, np.inf)
    return np.sort(distances, axis=1)[:, k - 1]


@pytest.mark.parametrize("k, contamination", [(1, 0.05), (5, 0.1), (20, 0.05)])
def test_score_and_threshold_follow_the_definition(k, contamination):
    rng = np.random.default_rng(k)
    calibration = rng.normal(size=(40, 3))
    probe = rng.normal(size=(25, 3)) * 2
    model = KNearestNeighbourModel(DecisionConfig(one_class_model="knn", n_neighbors=k,
                                                  contamination=contamination)).fit(calibration)
    np.testing.assert_allclose(model.score(probe), _kth_distances(probe, calibration, k, False), rtol=1e-12)
    leave_one_out = _kth_distances(calibration, calibration, k, True)
    assert model.threshold_ == pytest.approx(np.quantile(leave_one_out, 1 - contamination))
    # about `contamination` of the calibration vectors lie beyond the threshold (leave-one-out)
    assert (leave_one_out > model.threshold_).mean() <= contamination + 1e-9


def test_k_is_capped_by_the_calibration_set():
    calibration = np.random.default_rng(0).normal(size=(6, 2))
    model = KNearestNeighbourModel(DecisionConfig(one_class_model="knn", n_neighbors=20)).fit(calibration)
    assert model.k_ == 5
    far = np.array([[50.0, 50.0]])
    assert model.score(far)[0] > model.threshold_
