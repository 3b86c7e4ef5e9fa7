"""The isolation forest's trees walked together give scikit-learn's own
scores, to the last bit, for every shape of forest and input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from radar_ad.config import DecisionConfig
from radar_ad.one_class import isolation_forest
from radar_ad.one_class.isolation_forest import ForestArrays, IsolationForestModel


@pytest.mark.parametrize("rows, columns, options", [
    (113, 6, {}),
    (40, 3, {"max_features": 2}),  # each tree on a subset of the columns
    (300, 12, {"max_samples": 64, "n_estimators": 37}),
    (2, 1, {}),
    (1, 2, {}),  # one calibration row: the score is defined apart
])
def test_the_same_scores_as_scikit_learn(rows, columns, options):
    rng = np.random.default_rng(rows)
    features = rng.normal(size=(rows, columns))
    forest = IsolationForest(random_state=0, **{"n_estimators": 200, **options}).fit(features)
    arrays = ForestArrays.of(forest)
    assert arrays is not None
    probe = np.concatenate([rng.normal(size=(300, columns)) * 3, features, features[:1] + 1e-9,
                            np.full((2, columns), 1e39), np.full((1, columns), -1e39)])
    with np.errstate(over="ignore"):
        expected = forest.score_samples(probe)
    assert np.array_equal(arrays.score_samples(probe), expected)
    assert np.array_equal(arrays.score_samples(probe[:1]), expected[:1])
    assert arrays.score_samples(probe[:0]).shape == (0,)


def test_rows_are_walked_in_parts_and_many_rows_go_to_scikit_learn(monkeypatch):
    rng = np.random.default_rng(1)
    model = IsolationForestModel(DecisionConfig()).fit(rng.normal(size=(60, 4)))
    probe = rng.normal(size=(50, 4))
    monkeypatch.setattr(isolation_forest, "WALKED_ROWS", 7)
    assert np.array_equal(model.arrays_.score_samples(probe), model.model_.score_samples(probe))
    monkeypatch.setattr(isolation_forest, "WALKED_ROWS", 10)
    calls = []
    monkeypatch.setattr(model.arrays_.__class__, "score_samples", lambda self, rows: calls.append(rows))
    assert np.array_equal(model.score(probe), -model.model_.score_samples(probe)) and not calls


def test_the_model_scores_as_scikit_learn_and_falls_back_where_it_must():
    rng = np.random.default_rng(2)
    model = IsolationForestModel(DecisionConfig()).fit(rng.normal(size=(80, 5)))
    probe = rng.normal(size=(9, 5)) * 2
    assert np.array_equal(model.score(probe), -model.model_.score_samples(probe))
    # a non-finite row is scikit-learn's to score (a model's decision never passes one on)
    probe[3, 1] = np.nan
    assert np.array_equal(model.score(probe), -model.model_.score_samples(probe), equal_nan=True)
    # a scikit-learn that keeps its trees' path lengths elsewhere: its own scoring
    other = copy.deepcopy(model.model_)
    del other._decision_path_lengths
    assert ForestArrays.of(other) is None
    model.arrays_ = ForestArrays.of(other)
    assert np.array_equal(model.score(probe[:3]), -model.model_.score_samples(probe[:3]))
