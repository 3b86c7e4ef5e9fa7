"""The built-in data: the synthetic surfaces ``radar demo`` and ``radar
benchmark demo`` generate, and the model config sized for them.

A core module, so that the benchmark (and any script) can use the demo's
data and config without importing the apps.
"""

from __future__ import annotations

from .config import RadarConfig
from .synthetic import SyntheticSpec

DEMO_SPEC = SyntheticSpec(size=128, n_train=100, n_test_good=20, n_test_per_defect=5, seed=0)


def demo_config(steps: int | None = None) -> RadarConfig:
    """The demo's model for its 128 px surfaces: twice the default widths
    (32/64/64: on the demo its threshold let fewer normal images through,
    README "The demo"), attention only at the coarsest level, 500 steps, and a
    20 % calibration share (20 images) for the one-class model; the default
    20 % conformal share (20 images) is just enough for the 0.05 false-alarm
    rate (19 needed)."""
    config = RadarConfig().updated({
        "network.block_out_channels": [32, 64, 64],
        "network.attention": [False, False, True],
        "train.steps": 500,
        "train.batch_size": 64,
        "train.checkpoint_every": 200,
        "train.calibration_fraction": 0.2,
    })
    return config if steps is None else config.updated({"train.steps": steps})
