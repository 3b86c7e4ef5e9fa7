"""The segmentation response: a head learned from synthetic defects finds
real-looking ones, is seeded, and round-trips through the model's JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from radar_ad import Radar, RadarConfig
from radar_ad.noise_map import noise_map
from radar_ad.registry import RESPONSES
from radar_ad.responses.segmentation import SegmentationResponse

# 48 px crops (3 patches of 16 px), a narrow head: a few seconds of learning
SETTINGS = {"inference.response": "segmentation", "patch_size": 16, "network.block_out_channels": [16, 32],
            "network.attention": [False, False], "inference.segmentation_examples": 300,
            "inference.segmentation_steps": 200, "inference.segmentation_width": 8}


def _texture(seed: int, shape=(96, 112)) -> np.ndarray:
    """(1, H, W) a streaky texture in [0, 1] with its own brightness."""
    rng = np.random.default_rng(seed)
    streaks = np.repeat(rng.standard_normal((1, shape[1])), shape[0], 0) * 0.05
    return np.clip(rng.uniform(0.35, 0.65) + streaks + 0.03 * rng.standard_normal(shape), 0, 1)[None].astype(
        np.float32)


def _noise_of(images) -> torch.Tensor:
    """A stand-in for the network's noise map: a fixed local function of
    the image (its departure from the patch mean), tiled like the real one."""
    def predict(patches: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return (patches - patches.mean((2, 3), keepdim=True)) * 10
    return noise_map(predict, images, patch_size=16, stride=16)


@pytest.fixture(scope="module")
def response() -> SegmentationResponse:
    config = RadarConfig().updated(SETTINGS)
    learned = RESPONSES.get("segmentation")(config).learn([_texture(i) for i in range(6)], _noise_of)
    return learned.fit([_noise_of([torch.from_numpy(_texture(40 + i)) for i in range(4)])])


def test_a_dark_pit_and_a_crack_light_up_and_normal_texture_does_not(response):
    normal = [_texture(10 + i) for i in range(3)]
    pit, crack = _texture(20), _texture(21)
    rows, cols = np.mgrid[:96, :112]
    pit[0][(rows - 40) ** 2 + (cols - 60) ** 2 <= 16] *= 0.4
    for shift in (0, 1):  # never seen: a straight diagonal crack, 2 px wide
        crack[0, np.arange(20, 80), np.arange(30, 90) + shift] *= 0.3
    noise = _noise_of([torch.from_numpy(x) for x in normal + [pit, crack]])
    output = response(noise)
    assert output.anomaly_map.shape == (5, 96, 112) and output.features.shape == (5, 1)
    floor = max(2 * float(output.features[:3].max()), 0.005)
    assert float(output.features[3]) > floor and float(output.features[4]) > floor
    # and the map marks the pit's place above almost all of the normal texture
    assert output.anomaly_map[3, 38:43, 58:63].mean() > torch.quantile(output.anomaly_map[:3].flatten(), 0.99)


def test_seeded_and_round_trips_through_json(response):
    noise = _noise_of([torch.from_numpy(_texture(30))])
    again = SegmentationResponse(RadarConfig().updated(SETTINGS)).learn(
        [_texture(i) for i in range(6)], _noise_of).fit([_noise_of([torch.from_numpy(_texture(40 + i))
                                                                     for i in range(4)])])
    assert torch.equal(again(noise).anomaly_map, response(noise).anomaly_map)
    state = json.loads(json.dumps(response.state()))
    restored = SegmentationResponse.from_state(RadarConfig().updated(SETTINGS), state)
    assert torch.equal(restored(noise).anomaly_map, response(noise).anomaly_map)


@pytest.mark.parametrize("state, message", [
    (None, "must be an object with normal_level, head"),
    ({"normal_level": 0.5, "head": "not base64!"}, "cannot be read"),
    ({"normal_level": 0.5, "head": "AAAA"}, "cannot be read"),
])
def test_a_broken_state_is_refused_in_one_line(state, message):
    with pytest.raises(ValueError, match=message):
        SegmentationResponse.from_state(RadarConfig().updated(SETTINGS), state)


def test_non_finite_weights_are_refused(response):
    state = response.state()
    import base64

    from safetensors.torch import load, save
    weights = load(base64.b64decode(state["head"]))
    weights["layers.0.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        SegmentationResponse.from_state(RadarConfig().updated(SETTINGS),
                                        {"normal_level": 0.5, "head": base64.b64encode(save(weights)).decode()})


def test_fit_before_learning_is_refused():
    with pytest.raises(ValueError, match="learns from images first"):
        SegmentationResponse(RadarConfig()).fit([])


def test_a_model_with_it_saves_loads_and_exports_the_head(fitted, surfaces, tmp_path):
    radar, _ = fitted
    normal = sorted((surfaces / "train" / "good").glob("*.png"))
    twin = radar.with_settings({"inference.response": "segmentation", "inference.segmentation_examples": 64,
                                "inference.segmentation_steps": 30}).calibrate(normal[:24], conformal=normal[24:36])
    images = sorted((surfaces / "test").rglob("*.png"))[:4]
    expected = twin.predict_many(images)
    loaded = Radar.load(twin.save(tmp_path / "model"))
    for a, b in zip(expected, loaded.predict_many(images)):
        assert a.score == b.score and np.array_equal(a.anomaly_map, b.anomaly_map)
    exported = Radar.load(twin.export(tmp_path / "model.onnx"))
    assert exported.backend == "onnx"
    for a, b in zip(expected, exported.predict_many(images)):
        assert a.verdict == b.verdict and b.score == pytest.approx(a.score, rel=1e-3, abs=1e-6)
        np.testing.assert_allclose(b.anomaly_map, a.anomaly_map, rtol=0, atol=1e-4)
