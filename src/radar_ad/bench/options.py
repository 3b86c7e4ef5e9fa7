"""One ``radar benchmark`` run's settings: the options (the CLI's), their
defaults and the tiny ``--quick`` ones, the config each dataset is trained
with, and the command line that repeats a run.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import RadarConfig
from ..decision import MIN_CALIBRATION_IMAGES
from ..demo_data import demo_config
from ..errors import ConfigError
from ..registry import BACKENDS
from ..synthetic import SyntheticSpec
from .datasets import DatasetSource
from .methods import known_methods
from .splits import DEFAULT_VALIDATION_FRACTION

DEFAULT_RESIZE = 256
DEFAULT_SUBSET = 30
DEFAULT_CALIBRATION_LIMIT = 20

# --quick: a tiny network, tiny data and a tiny subset: a smoke run of every
# method, not a measurement.
QUICK_SETTINGS: dict[str, Any] = {
    "patch_size": 16,
    "network.block_out_channels": [8, 16],
    "network.attention": [False, False],
    "train.steps": 300,
    "train.batch_size": 32,
    "train.warmup_steps": 10,
    "train.calibration_fraction": 0.3,
    "inference.responses.segmentation.examples": 32,
    "inference.responses.segmentation.steps": 20,
    "inference.responses.segmentation.crop": 32,
}
QUICK_RESIZE = 64
QUICK_SUBSET = 4
QUICK_CALIBRATION_LIMIT = 8
QUICK_DEMO_SPEC = SyntheticSpec(size=64, n_train=40, n_test_good=8, n_test_per_defect=2, seed=0)


@dataclass
class BenchmarkOptions:
    """One run's settings (the CLI's options). ``None`` means the default,
    which ``quick`` makes tiny; ``methods`` None: every method."""

    quick: bool = False
    config_file: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None
    resize: int | None = None
    subset: int | None = None
    methods: Sequence[str] | None = None
    cache: Path | None = None
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    calibration_limit: int | None = None
    backend: str = "torch"
    device: str | None = None
    progress: bool = True

    def resolved(self) -> BenchmarkOptions:
        """A validated copy with every default filled in."""
        methods = tuple(dict.fromkeys(self.methods)) if self.methods else None
        known = known_methods()
        unknown = [m for m in methods or () if m not in known]
        if unknown:
            raise ConfigError(f"methods: unknown method {unknown[0]!r}; known: {', '.join(known)}",
                              setting="methods")
        BACKENDS.check(self.backend, "backend")
        if not 0 <= self.validation_fraction < 1:
            raise ConfigError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}",
                              setting="validation_fraction")
        subset = self.subset if self.subset is not None else (QUICK_SUBSET if self.quick else DEFAULT_SUBSET)
        if subset < 1:
            raise ConfigError(f"subset must be >= 1, got {subset}", setting="subset")
        limit = self.calibration_limit if self.calibration_limit is not None else (
            QUICK_CALIBRATION_LIMIT if self.quick else DEFAULT_CALIBRATION_LIMIT)
        if limit < MIN_CALIBRATION_IMAGES:
            raise ConfigError(f"calibration_limit must be >= {MIN_CALIBRATION_IMAGES}, got {limit}",
                              setting="calibration_limit")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}", setting="steps")
        return replace(self, methods=methods, subset=subset, calibration_limit=limit)


def dataset_config(source: DatasetSource, options: BenchmarkOptions) -> RadarConfig:
    """The config a dataset is trained with: ``config_file`` (else the demo's
    own for the demo data, else the default), the quick settings,
    ``data.resize`` (``resize``; by default 256 px for real data, native for
    the demo unless the config file sets one), ``steps``, then every override."""
    if options.config_file is not None:
        base = RadarConfig.from_file(options.config_file)
    else:
        base = demo_config() if source.builtin else RadarConfig()
    overrides: dict[str, Any] = dict(QUICK_SETTINGS) if options.quick else {}
    if options.resize is not None:
        overrides["data.resize"] = options.resize
    elif not source.builtin and base.data.resize is None:
        overrides["data.resize"] = QUICK_RESIZE if options.quick else DEFAULT_RESIZE
    if options.steps is not None:
        overrides["train.steps"] = options.steps
    overrides.update(options.overrides)
    return base.updated(overrides)


def command_line(datasets: Sequence[str] | None, out: Path, options: BenchmarkOptions) -> str:
    """A ``radar benchmark`` command equivalent to this run, for the report."""
    args = ["radar", "benchmark", *(datasets or []), "--out", str(out)]
    flags: list[tuple[str, Any]] = [
        ("--config", options.config_file), ("--steps", options.steps), ("--resize", options.resize),
        ("--subset", options.subset), ("--cache", options.cache),
        ("--calibration-limit", options.calibration_limit), ("--device", options.device)]
    if options.quick:
        args.append("--quick")
    args += [part for flag, value in flags if value is not None for part in (flag, str(value))]
    if options.methods:
        args += ["--methods", ",".join(options.methods)]
    if options.validation_fraction != DEFAULT_VALIDATION_FRACTION:
        args += ["--validation-fraction", str(options.validation_fraction)]
    if options.backend != "torch":
        args += ["--backend", options.backend]
    for key, value in options.overrides.items():
        args += ["--set", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    return shlex.join(args)

