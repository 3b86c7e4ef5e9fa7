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
from radar_ad import Radar, RadarConfig
from radar_ad.backend import BackendOutput, NoiseBackend
from radar_ad.decision import ImageDecision
from radar_ad.noise_map import border_weights, noise_map
from radar_ad.patches import stitch, tile
from radar_ad.pipeline import Calibration
from radar_ad.registry import RESPONSES
from radar_ad.response import respond

RESPONSE_NAMES = RESPONSES.names()
# settings that move every context a tile needs: filters, energy window,
# smoothing radius, feature windows that overlap and do not tile the image
ODD = {"inference.blur_ksize": 3, "inference.sobel_ksize": 7, "inference.energy_window": 15,
       "inference.map_sigma": 3.5, "inference.window": 33, "inference.window_stride": 7}


class CheapBackend(NoiseBackend):
    """A stand-in for the network (the memory and the tiling do not depend
    on it): a nonlinear function of each patch and its grid position."""

    name = "cheap"

    def predict(self, patches: torch.Tensor, index: torch.Tensor) -> BackendOutput:
        centred = patches - patches.mean((2, 3), keepdim=True)
        return BackendOutput(torch.tanh(3 * centred) + 0.05 * torch.sin(index.float()).view(-1, 1, 1, 1))


# a response that learns from images learns briefly here: these tests are about tiling and memory
BRIEF_LEARNING = {"inference.segmentation_examples": 16, "inference.segmentation_steps": 3}


def learned(response, channels: int = 1):
    """``response`` after :meth:`Response.learn` on random images through
    :class:`CheapBackend`, when it learns from images."""
    if response.learns_from_images:
        rng = np.random.default_rng(7)
        images = [rng.random((channels, 90, 100), dtype=np.float32) for _ in range(3)]
        response.learn(images, lambda batch: noise_map(CheapBackend(), batch, patch_size=28, stride=28))
    return response


def cheap_radar(response: str = "two_sided", channels: int = 1, **overrides: object) -> Radar:
    """A fitted Radar on :class:`CheapBackend`, calibrated on random images."""
    config = RadarConfig().updated({"inference.response": response, "data.grayscale": channels == 1,
                                    **BRIEF_LEARNING, **overrides})
    backend = CheapBackend()
    rng = np.random.default_rng(0)
    normal = [torch.from_numpy(rng.random((4, channels, 64, 72), dtype=np.float32)) for _ in range(6)]
    maps = [noise_map(backend, images, patch_size=config.patch_size, stride=config.stride) for images in normal]
    fitted = learned(RESPONSES.get(response)(config), channels).fit(maps)
    features = torch.cat([fitted(m).features for m in maps]).numpy()
    decision = ImageDecision(config.decision, config.seed).fit(features[:16], features[16:])
    pixels = torch.cat([fitted(m).anomaly_map.flatten() for m in maps]).numpy()
    calibration = Calibration(fitted, decision, float(np.quantile(pixels, 0.99)))
    return Radar(config)._learned(None, backend, channels, {}, calibration)


def fitted_response(name: str, settings: dict[str, object] | None = None):
    generator = torch.Generator().manual_seed(1)
    normal = [torch.randn(2, 1, 60, 70, generator=generator) for _ in range(3)]
    return learned(RESPONSES.get(name)(RadarConfig().updated({**BRIEF_LEARNING, **(settings or {})}))).fit(normal)


def assert_same(whole, tiled) -> None:
    scale = float(whole.anomaly_map.abs().max())
    assert float((whole.anomaly_map - tiled.anomaly_map).abs().max()) <= 1e-5 * scale
    np.testing.assert_allclose(tiled.features.numpy(), whole.features.numpy(), rtol=1e-5)


@pytest.mark.parametrize("settings", [{}, ODD], ids=["defaults", "odd"])
@pytest.mark.parametrize("name", RESPONSE_NAMES)
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
            assert_same(whole, respond(response, maps, tile=size, min_pixels=0))


@pytest.mark.parametrize("name", RESPONSE_NAMES)
def test_tiles_of_a_thin_image_clip_kernels_to_the_whole_image(name):
    """Image sides below the window and the smoothing radius clip them to
    the image, not to a tile."""
    response = fitted_response(name, {"inference.map_sigma": 20.0, "inference.window": 50})
    noise = torch.randn(1, 1, 15, 700, generator=torch.Generator().manual_seed(3))
    assert_same(response(noise), respond(response, noise, tile=32, min_pixels=0))


def test_streamed_noise_map_equals_tile_then_stitch():
    backend = CheapBackend()
    images = torch.rand(3, 2, 90, 61, generator=torch.Generator().manual_seed(4))
    patches = tile(images, 28, 14)
    index = torch.arange(patches.shape[0] // 3).repeat(3)
    expected = stitch(backend(patches, index), 90, 61, 14, border_weights(28, 4))
    for batch_size in (7, 1000):
        assert torch.equal(noise_map(backend, images, patch_size=28, stride=14, batch_size=batch_size), expected)
        assert torch.equal(noise_map(backend, list(images), patch_size=28, stride=14, batch_size=batch_size),
                           expected)


@pytest.mark.parametrize("name", RESPONSE_NAMES)
def test_predict_in_tiles_equals_predict_whole(name, monkeypatch):
    """Through Radar.predict_many (the path of detect, watch and serve)."""
    radar = cheap_radar(name)
    image = (np.random.default_rng(5).random((300, 410)) * 255).astype(np.uint8)
    image[100:160, 200:260] //= 4
    monkeypatch.setattr(response_module, "TILED_ABOVE", 10**12)
    whole = radar.predict_many([image, image[:, ::-1].copy()])
    monkeypatch.setattr(response_module, "TILED_ABOVE", 0)
    monkeypatch.setattr(response_module, "TILE", 64)
    tiled = radar.predict_many([image, image[:, ::-1].copy()])
    for a, b in zip(whole, tiled):
        assert np.array_equal(a.noise_map, b.noise_map)
        np.testing.assert_allclose(b.anomaly_map, a.anomaly_map, rtol=0, atol=1e-5 * float(a.anomaly_map.max()))
        np.testing.assert_allclose(b.features, a.features, rtol=1e-5)
        assert a.score == pytest.approx(b.score, rel=1e-9) and a.verdict == b.verdict
        assert np.array_equal(a.mask, b.mask)


# Peak memory of predicting one 2000 x 2000 grayscale image, beyond what the
# process held before. What a Prediction must hold is 13 bytes a pixel (image
# and noise map float32, anomaly map float32, mask bool); the stitching sums'
# weights and the decoded input add 8 more while it runs, one response tile a
# constant (~60 MB). Before streaming and tiles this was ~470 bytes a pixel.
BYTES_PER_PIXEL_BOUND = 60
MEASURE = textwrap.dedent("""
    import gc, json, resource, sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from test_memory import cheap_radar
    radar = cheap_radar()
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
def test_memory_of_a_large_image_is_bounded_per_pixel():
    # one thread: on a shared machine, waiting for a busy second core makes
    # each of the tiles' many small operations slow; memory is the same
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", MEASURE, str(Path(__file__).parent)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["bytes_per_pixel"] < BYTES_PER_PIXEL_BOUND, measured
