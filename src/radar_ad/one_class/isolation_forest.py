"""The paper's one-class model: an isolation forest.

scikit-learn's ``IsolationForest`` fits it. Its scoring walks the trees
one Python call per tree, a cost per call that dominates for the few rows
a prediction scores, so the fitted trees are also laid side by side in
arrays (:class:`ForestArrays`) and walked together, level by level, in a few
NumPy operations: the same leaves, the same per-leaf path lengths added in
the same order, so the same scores to the last bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from sklearn.ensemble import IsolationForest

from ..decision import OneClassModel
from ..registry import ONE_CLASS_MODELS
from ..settings import described, int_in, settings

MAX_ESTIMATORS = 10_000
# Rows walked through every tree at once (memory: trees x rows node indices). From
# this many rows on, scikit-learn's own walk (compiled, tree by tree) is the faster.
WALKED_ROWS = 2048


@dataclass(frozen=True)
class ForestArrays:
    """A fitted ``IsolationForest``'s trees in flat arrays, ``nodes`` slots
    per tree (padded with leaves): each node's column of the scored
    features, split threshold, children (indices into these arrays; a leaf
    is its own child) and its leaf's path length (scikit-learn's depth plus
    the average path length of the samples left there, minus one). Built
    by :meth:`of`."""

    column: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    leaf_length: np.ndarray
    trees: int
    nodes: int
    depth: int
    denominator: float
    n_features: int

    @classmethod
    def of(cls, forest: IsolationForest) -> ForestArrays | None:
        """The arrays of a fitted forest; ``None`` when this scikit-learn
        keeps what scoring needs elsewhere (its own scoring is used then)."""
        try:
            lengths, averages = forest._decision_path_lengths, forest._average_path_length_per_tree
            from sklearn.ensemble._iforest import _average_path_length
            denominator = float(len(forest.estimators_) * _average_path_length([forest._max_samples])[0])
            subsampled = forest._max_features != forest.n_features_in_
            trees = [estimator.tree_ for estimator in forest.estimators_]
            features = forest.estimators_features_
        except (AttributeError, ImportError):
            return None
        nodes = max(tree.node_count for tree in trees)
        shape = (len(trees), nodes)
        column = np.zeros(shape, np.intp)
        threshold, leaf_length = np.zeros(shape), np.zeros(shape)
        slots = np.arange(len(trees) * nodes).reshape(shape)
        left, right = slots.copy(), slots.copy()  # padding: leaves
        for t, tree in enumerate(trees):
            n = tree.node_count
            split = tree.children_left[:n] >= 0
            columns = np.where(split, tree.feature[:n], 0)
            column[t, :n] = np.asarray(features[t])[columns] if subsampled else columns
            threshold[t, :n] = tree.threshold[:n]
            left[t, :n] = np.where(split, t * nodes + tree.children_left[:n], slots[t, :n])
            right[t, :n] = np.where(split, t * nodes + tree.children_right[:n], slots[t, :n])
            leaf_length[t, :n] = lengths[t] + averages[t] - 1.0
        return cls(column.ravel(), threshold.ravel(), left.ravel(), right.ravel(), leaf_length.ravel(), len(trees),
                   nodes, max(tree.max_depth for tree in trees), denominator, int(forest.n_features_in_))

    def score_samples(self, features: np.ndarray) -> np.ndarray:
        """scikit-learn's ``score_samples`` of finite ``(N, F)`` features."""
        with np.errstate(over="ignore"):  # beyond float32's range is beyond every threshold, as in sklearn
            rows = np.asarray(features, dtype=np.float32)  # the trees compare float32 features
        return np.concatenate([self._walk(rows[start:start + WALKED_ROWS])
                               for start in range(0, len(rows), WALKED_ROWS)] or [np.zeros(0)])

    def _walk(self, rows: np.ndarray) -> np.ndarray:
        # one node per tree and row, each tree's walk starting at its root
        node = np.repeat(np.arange(self.trees) * self.nodes, len(rows)).reshape(self.trees, len(rows))
        at_row = np.arange(len(rows)) * rows.shape[1]
        flat_rows = rows.ravel()
        for _ in range(self.depth):
            goes_left = flat_rows[at_row + self.column[node]] <= self.threshold[node]
            node = np.where(goes_left, self.left[node], self.right[node])
        depths = np.zeros(len(rows))
        for tree_paths in self.leaf_length[node]:  # tree by tree, as scikit-learn adds them
            depths += tree_paths
        ratio = np.divide(depths, self.denominator, out=np.ones_like(depths), where=self.denominator != 0)
        return -(2**-ratio)


@settings
class IsolationForestSettings:
    """The isolation forest's own settings."""

    section: ClassVar[str] = "decision.one_class_models.isolation_forest"
    n_estimators: int = described(200, "Trees of the isolation forest.")

    def validate(self) -> None:
        int_in(self.n_estimators, 1, MAX_ESTIMATORS, f"{self.section}.n_estimators")


@ONE_CLASS_MODELS.register("isolation_forest")
class IsolationForestModel(OneClassModel):
    """scikit-learn's ``IsolationForest`` (``n_estimators`` trees, seeded);
    score = negated ``score_samples`` (its trees walked together,
    :class:`ForestArrays`), threshold = negated ``offset_``."""

    abbreviation = "if"
    Settings = IsolationForestSettings
    settings: IsolationForestSettings

    def fit(self, features: np.ndarray) -> IsolationForestModel:
        self.model_ = IsolationForest(n_estimators=self.settings.n_estimators,
                                      contamination=self.config.contamination,
                                      random_state=self.seed).fit(features)
        self.threshold_ = float(-self.model_.offset_)
        self.arrays_ = ForestArrays.of(self.model_)
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features)
        if self.arrays_ is None or features.ndim != 2 or features.shape[1] != self.arrays_.n_features \
                or len(features) >= WALKED_ROWS or not np.isfinite(features).all():
            return -self.model_.score_samples(features)
        return -self.arrays_.score_samples(features)
