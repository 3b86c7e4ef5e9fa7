"""Bounded memory on large images: the noise map is stitched while its
patches stream through the network, the response is computed in tiles, and
both give the results of the whole-image computation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import radar_ad.response as response_module
import radar_ad.responses.segmentation as segmentation_module
from radar_ad import Radar, RadarConfig
from radar_ad.backend import BackendOutput, NoiseBackend
from radar_ad.noise_map import border_weights, noise_map, one_step_evidence
from radar_ad.patches import stitch, tile
from radar_ad.registry import RESPONSES
from radar_ad.response import Response, build_response, respond_in_tiles

RESPONSE_NAMES = RESPONSES.names()
# the responses computed on one noise map (per level), which respond_in_tiles() tiles
MAP_RESPONSES = tuple(name for name in RESPONSE_NAMES if issubclass(RESPONSES.get(name), Response))
# settings that move every context a tile needs: filters, energy window,
# smoothing radius, feature windows that overlap and do not tile the image
ODD = {"inference.blur_ksize": 3, "inference.sobel_ksize": 7, "inference.energy_window": 15,
       "inference.map_sigma": 3.5, "inference.map_sigmas": [1.5, 3.5, 9.0], "inference.window": 33,
       "inference.window_stride": 7}
# a response that learns from images learns briefly here: these tests are about tiling and memory
BRIEF_LEARNING = {"inference.responses.segmentation.examples": 8, "inference.responses.segmentation.steps": 3,
                  "inference.responses.segmentation.crop": 32}


class CheapBackend(NoiseBackend):
    """A stand-in for the network (the memory and the tiling do not depend
    on it): a nonlinear function of each patch, its grid position and level."""

    name = "cheap"

    def predict(self, patches: torch.Tensor, index: torch.Tensor, level: torch.Tensor) -> BackendOutput:
        centred = patches - patches.mean((2, 3), keepdim=True)
        shift = 0.05 * torch.sin(index.float()) + 0.1 * level.float()
        return BackendOutput(torch.tanh(3 * centred) + shift.view(-1, 1, 1, 1), 0.5 * centred)


def settled(response: str, channels: int = 1, **overrides: object) -> RadarConfig:
    """A config that names its response, levels and image score (nothing left to choose)."""
    return RadarConfig().updated({"inference.response": response, "inference.scales": [1, 2, 4],
                                  "inference.image_score": "features", "data.grayscale": channels == 1,
                                  **BRIEF_LEARNING, **overrides})


def cheap_radar(response: str = "two_sided", channels: int = 1, **overrides: object) -> Radar:
    """A Radar on :class:`CheapBackend`, calibrated on random images by the pipeline itself."""
    rng = np.random.default_rng(0)
    shape = (64, 72) if channels == 1 else (64, 72, channels)
    normal = [(rng.random(shape) * 255).astype(np.uint8) for _ in range(24)]
    config = settled(response, channels, **overrides)
    radar = Radar(config)._learned(None, CheapBackend(), channels, {}, None, "the network")
    return radar.refit_calibration(normal[:16], conformal=normal[16:])


def evidence_of(config: RadarConfig, images) -> object:
    scales = config.network.scales
    return one_step_evidence(CheapBackend(), list(images), scales, list(range(len(scales))),
                             patch_size=config.patch_size, stride=config.stride)


def fitted_response(name: str, settings: dict[str, object] | None = None) -> Response:
    """A map-level response fitted on random noise maps."""
    generator = torch.Generator().manual_seed(1)
    normal = [torch.randn(2, 1, 60, 70, generator=generator) for _ in range(3)]
    return RESPONSES.get(name)(RadarConfig().updated({**BRIEF_LEARNING, **(settings or {})})).fit(normal)


def assert_same(whole, tiled) -> None:
    scale = float(whole.anomaly_map.abs().max())
    assert float((whole.anomaly_map - tiled.anomaly_map).abs().max()) <= 1e-5 * scale
    np.testing.assert_allclose(tiled.features.numpy(), whole.features.numpy(), rtol=1e-5)


@pytest.mark.parametrize("settings", [{}, ODD], ids=["defaults", "odd"])
@pytest.mark.parametrize("name", MAP_RESPONSES)
def test_tiled_response_equals_the_whole_image(name, settings):
    response = fitted_response(name, settings)
    generator = torch.Generator().manual_seed(2)
    # many tiles, a ragged last row and column, a local defect, and colour
    noise = torch.randn(2, 1, 231, 317, generator=generator)
    noise[:, :, 100:140, 30:90] *= 0.2
    colour = torch.randn(1, 3, 97, 160, generator=generator)
    for maps in (noise, colour):
        whole = response(maps)
        for size in (40, 64):
            assert_same(whole, respond_in_tiles(response, maps, tile=size, min_pixels=0))


@pytest.mark.parametrize("name", MAP_RESPONSES)
def test_tiles_of_a_thin_image_clip_kernels_to_the_whole_image(name):
    """Image sides below the window and the smoothing radius clip them to
    the image, not to a tile."""
    response = fitted_response(name, {"inference.map_sigma": 20.0, "inference.map_sigmas": [2.0, 20.0],
                                      "inference.window": 50})
    noise = torch.randn(1, 1, 15, 700, generator=torch.Generator().manual_seed(3))
    assert_same(response(noise), respond_in_tiles(response, noise, tile=32, min_pixels=0))


def test_streamed_noise_map_equals_tile_then_stitch():
    backend = CheapBackend()
    images = torch.rand(3, 2, 90, 61, generator=torch.Generator().manual_seed(4))
    patches = tile(images, 28, 14)
    index = torch.arange(patches.shape[0] // 3).repeat(3)

    def predict(patches: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return backend(patches, index, torch.ones_like(index))

    expected = stitch(predict(patches, index), 90, 61, 14, border_weights(28, 4))
    assert expected.shape == (3, 4, 90, 61)  # noise and repair of each channel
    for batch_size in (7, 1000):
        assert torch.equal(noise_map(predict, images, patch_size=28, stride=14, batch_size=batch_size), expected)
        assert torch.equal(noise_map(predict, list(images), patch_size=28, stride=14, batch_size=batch_size),
                           expected)


def test_the_heads_tiles_equal_the_whole_image(monkeypatch):
    config = settled("segmentation")
    rng = np.random.default_rng(3)
    images = [rng.random((1, 70, 80), dtype=np.float32) for _ in range(3)]
    response = build_response(config).learn(images, lambda batch: evidence_of(config, batch))
    evidence = evidence_of(config, torch.rand(2, 1, 231, 317, generator=torch.Generator().manual_seed(2)))
    monkeypatch.setattr(segmentation_module, "TILED_ABOVE", 10**12)
    whole = response(evidence)
    monkeypatch.setattr(segmentation_module, "TILED_ABOVE", 0)
    for size in (64, 100):  # tiles of a multiple of the head's pooling, and not
        monkeypatch.setattr(segmentation_module, "TILE", size)
        assert_same(whole, response(evidence))


@pytest.mark.parametrize("name", RESPONSE_NAMES)
def test_predict_in_tiles_equals_predict_whole(name, monkeypatch):
    """Through Radar.predict_many (the path of detect, watch and serve)."""
    radar = cheap_radar(name)
    image = (np.random.default_rng(5).random((300, 410)) * 255).astype(np.uint8)
    image[100:160, 200:260] //= 4
    for module in (response_module, segmentation_module):
        monkeypatch.setattr(module, "TILED_ABOVE", 10**12)
    whole = radar.predict_many([image, image[:, ::-1].copy()])
    for module in (response_module, segmentation_module):
        monkeypatch.setattr(module, "TILED_ABOVE", 0)
        monkeypatch.setattr(module, "TILE", 64)
    tiled = radar.predict_many([image, image[:, ::-1].copy()])
    for a, b in zip(whole, tiled):
        assert np.array_equal(a.noise_map, b.noise_map)
        np.testing.assert_allclose(b.anomaly_map, a.anomaly_map, rtol=0, atol=1e-5 * float(a.anomaly_map.max()))
        np.testing.assert_allclose(b.features, a.features, rtol=1e-5)
        assert a.score == pytest.approx(b.score, rel=1e-9) and a.verdict == b.verdict
        assert np.array_equal(a.mask, b.mask)


# Peak memory of predicting one 2000 x 2000 grayscale image, beyond what the
# process held before. What a Prediction must hold is 17 bytes a pixel (image
# float32, noise and repair map float32, anomaly map float32, mask bool);
# the evidence's coarser levels add 2.5, the stitching sums' weights and the
# decoded input 8 more while it runs, one response tile a constant (~60 MB).
# The segmentation head also holds every level's log local noise energy (4
# bytes a pixel at the finest level, 1.25 at the coarser ones) and, while the
# energy is computed, the box filter's float32 temporaries (about 12 more).
# The allocator's slack on top differs between machines by several bytes a
# pixel, hence the margin above these sums.
BYTES_PER_PIXEL_BOUND = {"two_sided": 70, "segmentation": 85}
MEASURE = textwrap.dedent("""
    import gc, json, resource, sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from test_memory import cheap_radar
    radar = cheap_radar(sys.argv[2])
    radar.predict(np.zeros((64, 64), np.uint8))  # warm-up
    image = (np.random.default_rng(0).random((2000, 2000)) * 255).astype(np.uint8)
    gc.collect()
    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        peak = lambda: status("VmHWM")
    except OSError:
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    before = status("VmRSS")
    prediction = radar.predict(image)
    print(json.dumps({"bytes_per_pixel": (peak() - before) / image.size, "score": prediction.score}))
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("name", ["two_sided", "segmentation"])
def test_memory_of_a_large_image_is_bounded_per_pixel(name):
    # one thread: on a shared machine, waiting for a busy second core makes
    # each of the tiles' many small operations slow; memory is the same
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", MEASURE, str(Path(__file__).parent), name], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["bytes_per_pixel"] < BYTES_PER_PIXEL_BOUND[name], measured
