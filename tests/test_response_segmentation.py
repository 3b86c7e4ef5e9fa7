"""The segmentation response: a head on the image and every level's one-step
evidence, learned from synthetic defects, finds real-looking ones, is
seeded, round-trips through its JSON state and its tensors (a model file
of format 4 still loads), and runs behind every backend."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load, save

from radar_ad import Radar, RadarConfig
from radar_ad.backend import BackendOutput, NoiseBackend
from radar_ad.noise_map import one_step_evidence
from radar_ad.registry import BACKENDS
from radar_ad.responses.segmentation import SegmentationResponse

# 16 px patches at three levels, a narrow head: a few seconds of learning
SETTINGS = {"inference.response": "segmentation", "inference.scales": [1, 2, 4], "inference.image_score": "features",
            "patch_size": 16, "network.block_out_channels": [16, 32], "network.attention": [False, False],
            "inference.responses.segmentation.examples": 80, "inference.responses.segmentation.steps": 150,
            "inference.responses.segmentation.width": 8, "inference.responses.segmentation.crop": 40}


def _texture(seed: int, shape=(96, 112)) -> np.ndarray:
    """(1, H, W) a streaky texture in [0, 1] with its own brightness."""
    rng = np.random.default_rng(seed)
    streaks = np.repeat(rng.standard_normal((1, shape[1])), shape[0], 0) * 0.05
    return np.clip(rng.uniform(0.35, 0.65) + streaks + 0.03 * rng.standard_normal(shape), 0, 1)[None].astype(
        np.float32)


class LocalBackend(NoiseBackend):
    """A stand-in for the network: the noise is a fixed local function of
    the patch (its departure from the patch mean), the repair pulls a patch
    back to its mean; the same at every level."""

    name = "local"

    def predict(self, patches: torch.Tensor, index: torch.Tensor, level: torch.Tensor) -> BackendOutput:
        centred = patches - patches.mean((2, 3), keepdim=True)
        return BackendOutput(centred * 10, -centred)


def _evidence(images):
    return one_step_evidence(LocalBackend(), [torch.as_tensor(image) for image in images], (1, 2, 4), (0, 1, 2),
                             patch_size=16, stride=16)


@pytest.fixture(scope="module")
def response() -> SegmentationResponse:
    config = RadarConfig().updated(SETTINGS)
    return SegmentationResponse(config).learn([_texture(i) for i in range(6)], _evidence)


def test_a_dark_pit_and_a_crack_light_up_and_normal_texture_does_not(response):
    normal = [_texture(10 + i) for i in range(3)]
    pit, crack = _texture(20), _texture(21)
    rows, cols = np.mgrid[:96, :112]
    pit[0][(rows - 40) ** 2 + (cols - 60) ** 2 <= 16] *= 0.4
    for shift in (0, 1):  # a straight diagonal crack, 2 px wide
        crack[0, np.arange(20, 80), np.arange(30, 90) + shift] *= 0.3
    output = response(_evidence(normal + [pit, crack]))
    assert output.anomaly_map.shape == (5, 96, 112) and output.features.shape == (5, 1)
    assert float(output.features[3:].min()) > float(output.features[:3].max())
    # and the map marks the pit's place above almost all of the normal texture
    assert output.anomaly_map[3, 38:43, 58:63].mean() > torch.quantile(output.anomaly_map[:3].flatten(), 0.99)


def _restored(state, tensors):
    restored = SegmentationResponse(RadarConfig().updated(SETTINGS))
    restored.load_state(state, tensors)
    return restored


def test_seeded_and_round_trips_through_json_and_tensors(response):
    evidence = _evidence([_texture(30)])
    again = SegmentationResponse(RadarConfig().updated(SETTINGS)).learn([_texture(i) for i in range(6)], _evidence)
    assert torch.equal(again(evidence).anomaly_map, response(evidence).anomaly_map)
    state = json.loads(json.dumps(response.state()))
    assert set(state) == {"channels"}  # the weights are tensors, not JSON
    tensors = load(save(response.tensors()))
    assert torch.equal(_restored(state, tensors)(evidence).anomaly_map, response(evidence).anomaly_map)
    # a model file of format 4 held the head in its JSON, base64
    legacy = {**state, "head": base64.b64encode(save(response.tensors())).decode()}
    assert torch.equal(_restored(legacy, {})(evidence).anomaly_map, response(evidence).anomaly_map)


def test_each_normal_image_is_read_once_and_its_crops_are_cut_from_its_own_evidence():
    images = [_texture(i) for i in range(6)]
    calls = []

    def counted(batch):
        calls.append(len(batch))
        return _evidence(batch)

    brief = {**SETTINGS, "inference.responses.segmentation.steps": 1}  # the examples are what is checked
    learned = SegmentationResponse(RadarConfig().updated(brief)).learn(images, counted)
    examples = learned.examples_
    n_normal = round(0.25 * 80)
    # every one of the 6 images sets the input standardisation, and the 20 normal examples are drawn from
    # them: 6 evaluations, then one per defective copy
    assert sum(calls) == len(calls) == 6 + (80 - n_normal)
    assert examples.kinds[:6 + n_normal] == ["normal"] * (6 + n_normal)
    assert all(kind != "normal" for kind in examples.kinds[6 + n_normal:])
    assert not examples.masks[:6 + n_normal].any()
    # each normal crop is a crop of one of the images' own evidence stack
    stacks = [learned._stack(_evidence([image]).select(learned.scales))[0].half() for image in images]
    crop = examples.inputs.shape[-1]
    for inputs in examples.inputs[:6 + n_normal]:
        corner = inputs[0, 0, 0]  # the image channel's corner pixel, then the whole crop
        assert any(torch.equal(stack[:, top:top + crop, left:left + crop], inputs)
                   for stack in stacks for top, left in zip(*torch.nonzero(stack[0] == corner, as_tuple=True))
                   if top + crop <= stack.shape[1] and left + crop <= stack.shape[2])


@pytest.mark.parametrize("state, tensors, message", [
    (None, {}, "must be an object with channels"),
    ({"channels": 1}, {}, "cannot be read"),
    ({"channels": 1}, {"out.weight": torch.zeros(1)}, "cannot be read"),
    ({"channels": 1, "head": "not base64!"}, {}, "cannot be read"),
    ({"channels": 1, "head": "AAAA"}, {}, "cannot be read"),
    ({"channels": 9}, {}, "cannot be read"),
])
def test_a_broken_state_is_refused_in_one_line(state, tensors, message):
    with pytest.raises(ValueError, match=message):
        _restored(state, tensors)


def test_non_finite_weights_are_refused(response):
    weights = response.tensors()
    weights["out.weight"] = weights["out.weight"].clone()
    weights["out.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        _restored({"channels": 1}, weights)


def test_answering_before_learning_is_refused():
    with pytest.raises(ValueError, match="learns from images first"):
        SegmentationResponse(RadarConfig().updated(SETTINGS)).respond(_evidence([_texture(0)]))


def test_a_model_with_it_saves_loads_exports_and_gives_every_backend_the_same_verdicts(fitted, surfaces, tmp_path):
    radar, _ = fitted
    normal = sorted((surfaces / "train" / "good").glob("*.png"))
    twin = radar.with_settings({"inference.response": "segmentation", "inference.image_score": "max",
                                "inference.responses.segmentation": {"examples": 40, "steps": 30, "crop": 48}})
    twin = twin.refit_calibration(normal[:24], conformal=normal[24:36])
    images = sorted((surfaces / "test").rglob("*.png"))
    expected = twin.predict_many(images)
    saved = twin.save(tmp_path / "model")
    assert (saved / "response.safetensors").is_file()
    assert json.loads((saved / "radar.json").read_text())["response_statistics"] == {"channels": 1}
    loaded = Radar.load(saved)
    for a, b in zip(expected, loaded.predict_many(images)):
        assert a.score == b.score and np.array_equal(a.anomaly_map, b.anomaly_map)
    exported = Radar.load(twin.export(tmp_path / "model.onnx"))
    others = [exported] + [twin.with_backend(name) for name in BACKENDS.names() if name != "torch"]
    for other in others:
        for a, b in zip(expected, other.predict_many(images)):
            assert a.verdict == b.verdict and b.score == pytest.approx(a.score, rel=1e-3, abs=1e-6)
            np.testing.assert_allclose(b.anomaly_map, a.anomaly_map, rtol=0, atol=1e-4)


def test_the_head_runs_channels_last_one_image_at_a_time_and_stores_plain_tensors(response):
    assert response.head_.down_full[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(tensor.is_contiguous() for tensor in response.tensors().values())
    restored = _restored(response.state(), load(save(response.tensors())))
    assert restored.head_.down_full[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    images = [_texture(40 + i) for i in range(3)]
    together = response(_evidence(images)).anomaly_map
    alone = torch.cat([response(_evidence([image])).anomaly_map for image in images])
    assert torch.allclose(together, alone, atol=1e-6)
