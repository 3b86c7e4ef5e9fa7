"""Shared fixtures: small generated surfaces and one tiny model trained on
them once per session (the end-to-end tests reuse it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radar_ad import Radar, RadarConfig
from radar_ad.synthetic import SyntheticSpec, make_dataset

TINY = {
    "network.block_out_channels": [16, 32, 32],
    "network.attention": [False, False, True],
    "train.steps": 200,
    "train.batch_size": 32,
    "train.checkpoint_every": 100,
    # 15 calibration images: an IsolationForest on fewer can rank badly.
    "train.calibration_fraction": 0.3,
    # 10 conformal images: p-values down to 1/11, so a 0.1 false-alarm rate can flag
    "train.conformal_size": 10,
    "decision.false_alarm_rate": 0.1,
    # one level: 200 steps are too few to learn three levels of 64 px
    # surfaces; the pyramid has its own tests (test_pyramid, test_export,
    # test_backends, test_memory)
    "network.scales": [1],
    # named, not left to calibration: the shared model is the same whatever a
    # self-validation on tiny data would pick (tests/test_selection.py tests that)
    "inference.response": "two_sided",
    "inference.scales": [1],
    "inference.image_score": "features",
    # 64 px surfaces: the map's smoothings up to a sixteenth of the image, as the default's at 256 px
    "inference.map_sigmas": [1, 2, 4],
    # the segmentation head learns briefly: the tests are about behaviour, not its quality
    "inference.responses.segmentation.examples": 40,
    "inference.responses.segmentation.steps": 30,
    "inference.responses.segmentation.crop": 32,
}


def tiny_config(**overrides) -> RadarConfig:
    return RadarConfig().updated({**TINY, **overrides})


@pytest.fixture(scope="session")
def surfaces(tmp_path_factory) -> Path:
    spec = SyntheticSpec(size=64, n_train=50, n_test_good=8, n_test_per_defect=2,
                         severity=(0.8, 1.0), seed=0)
    return make_dataset(tmp_path_factory.mktemp("data") / "surfaces", spec)


@pytest.fixture(scope="session")
def fitted(surfaces, tmp_path_factory) -> tuple[Radar, Path]:
    radar = Radar(tiny_config()).fit(surfaces, progress=False)
    model_dir = radar.save(tmp_path_factory.mktemp("models") / "tiny")
    return radar, model_dir


@pytest.fixture(scope="session")
def pyramid_fitted(surfaces, tmp_path_factory) -> tuple[Radar, Path]:
    """The tiny model on the default pyramid (every level trained and read):
    for what must hold at every level (backends, export, self-validation)."""
    radar = Radar(tiny_config(**{"network.scales": [1, 2, 4], "inference.scales": [1, 2, 4]})).fit(
        surfaces, progress=False)
    model_dir = radar.save(tmp_path_factory.mktemp("models") / "pyramid")
    return radar, model_dir


def write_gray(path: Path, size: int = 64, seed: int = 0) -> Path:
    array = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return path
