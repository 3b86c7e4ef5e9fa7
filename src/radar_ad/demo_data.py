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
    """The demo's model for its 128 px surfaces: the default network (widths
    16/32/32, attention only at the coarsest level, every pyramid level),
    400 steps of 64 patches, and a 20 % calibration share (20 images) for
    the one-class model and the self-validation; the default 20 %
    conformal share (20 images) is just enough for the 0.05 false-alarm
    rate (19 needed). The segmentation head learns from fewer, smaller
    crops than the default (its surfaces are small, and the demo is meant to
    run on a laptop's CPU); the response, levels and image score are chosen
    as by default."""
    config = RadarConfig().updated({
        "network.block_out_channels": [16, 32, 32],
        "network.attention": [False, False, True],
        "train.steps": 400,
        "train.batch_size": 64,
        "train.checkpoint_every": 200,
        "train.calibration_fraction": 0.2,
        "inference.responses.segmentation.examples": 160,
        "inference.responses.segmentation.steps": 250,
        "inference.responses.segmentation.crop": 64,
    })
    return config if steps is None else config.updated({"train.steps": steps})
