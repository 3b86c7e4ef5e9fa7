"""What a benchmark run produces, as plain data: the report
(:mod:`radar_ad.bench.report`) reads these and the runner
(:mod:`radar_ad.bench.runner`) fills them, so neither imports the other's
internals."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Example:
    """One test image of the report's map gallery, with every method's map."""

    file: str
    label: str
    image: np.ndarray  # (C, H, W) in [0, 1], as the model saw it
    truth: np.ndarray  # (H, W) bool
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # method key -> (H, W)
    scores: dict[str, float] = field(default_factory=dict)
    verdicts: dict[str, bool] = field(default_factory=dict)


@dataclass
class MethodRun:
    """One method on one dataset: what it was fitted on, its per-image
    results (``records`` by test index) and its metrics per table."""

    info: dict[str, Any]
    records: dict[int, dict[str, Any]]
    metrics: dict[str, dict[str, Any]]


@dataclass
class DatasetResult:
    summary: dict[str, Any]  # this dataset's part of results.json
    examples: list[Example]


@dataclass
class BenchmarkResult:
    """``summary`` is what ``results.json`` holds; ``examples`` (per dataset
    name) the arrays only the HTML report shows; ``files`` what was written."""

    summary: dict[str, Any]
    examples: dict[str, list[Example]]
    files: dict[str, Path] = field(default_factory=dict)
    markdown: str = ""
