"""A new response is one file plus its test: a response defined here, with
its own settings and learned tensors, is registered from this test module
and then trained (through the command line, its settings given with
``--set``), saved, loaded and exported with no edit to the core."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from radar_ad import Radar, RadarConfig
from radar_ad.apps.cli import main
from radar_ad.errors import ConfigError
from radar_ad.filters import gaussian_smooth
from radar_ad.noise_map import Evidence
from radar_ad.registry import RESPONSES
from radar_ad.response import EvidenceResponse, NormalEvidence, ResponseOutput
from radar_ad.settings import described, require, settings

from conftest import tiny_config

NAME = "toy_deviation"


@settings
class ToySettings:
    """The toy response's own settings."""

    section: ClassVar[str] = f"inference.responses.{NAME}"
    sigma: float = described(1.0, "Gaussian smoothing (px) of the map.")
    floor: float = described(1e-3, "Smallest spread a channel is divided by.")

    def validate(self) -> None:
        require(0 <= self.sigma <= 16, f"{self.section}.sigma", "in [0, 16]", self.sigma)
        require(0 < self.floor <= 1, f"{self.section}.floor", "in (0, 1]", self.floor)


class ToyDeviation(EvidenceResponse):
    """P = the finest level's predicted noise, standardised per channel by
    its mean and spread on normal images (learned tensors), in absolute
    value, averaged over channels and smoothed; feature = its largest value."""

    response_feature_names = ("max_deviation",)
    Settings = ToySettings
    settings: ToySettings

    def fit(self, evidence: NormalEvidence) -> ToyDeviation:
        noise = torch.cat([item.noise[0].double().transpose(0, 1).flatten(1) for item in evidence()], 1)
        self.mean_, self.spread_ = noise.mean(1), noise.std(1).clamp_min(self.settings.floor)
        self.images_ = sum(len(item) for item in evidence())
        return self

    def respond(self, evidence: Evidence) -> ResponseOutput:
        noise = evidence.noise[0].double()
        deviation = ((noise - self.mean_.view(1, -1, 1, 1)) / self.spread_.view(1, -1, 1, 1)).abs().mean(1, True)
        anomaly = gaussian_smooth(deviation, self.settings.sigma)[:, 0].float()
        return ResponseOutput(anomaly, anomaly.flatten(1).amax(1, keepdim=True).double())

    def state(self) -> dict[str, Any]:
        return {"images": self.images_}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean_, "spread": self.spread_}

    def load_state(self, state: Any, tensors: dict[str, torch.Tensor]) -> None:
        if not isinstance(state, dict) or set(state) != {"images"} or set(tensors) != {"mean", "spread"}:
            raise ValueError(f"the {NAME} response stores images, and the tensors mean and spread")
        self.images_, self.mean_, self.spread_ = int(state["images"]), tensors["mean"], tensors["spread"]


@pytest.fixture
def registered() -> Iterator[type[ToyDeviation]]:
    """The toy registered for one test (registered at import, it would sit in
    every model this session saves, which other processes cannot read)."""
    RESPONSES.register(NAME)(ToyDeviation)
    try:
        yield ToyDeviation
    finally:
        del RESPONSES._entries[NAME]


def test_its_settings_sit_under_its_name_with_their_defaults_and_bounds(registered):
    config = RadarConfig()
    assert config.inference.responses[NAME] == ToySettings()
    assert config.to_dict()["inference"]["responses"][NAME] == {"sigma": 1.0, "floor": 1e-3}
    changed = config.updated({f"inference.responses.{NAME}.sigma": 2.5})
    assert changed.inference.responses[NAME].sigma == 2.5 and changed.changes(config) == [
        f"inference.responses.{NAME}.sigma"]
    assert RadarConfig.from_dict(changed.to_dict()) == changed
    with pytest.raises(ConfigError, match=rf"inference.responses.{NAME}.sigma must be in \[0, 16\], got 99"):
        config.updated({f"inference.responses.{NAME}.sigma": 99})
    with pytest.raises(ConfigError, match="unknown setting"):
        config.updated({f"inference.responses.{NAME}.sigmaa": 2})
    with pytest.raises(ConfigError, match="unknown setting inference.responses.toy_deviaton"):
        RadarConfig.from_dict({"inference": {"responses": {"toy_deviaton": {"sigma": 2}}}})


def test_it_trains_saves_loads_and_exports_with_no_core_edit(registered, surfaces, tmp_path, capsys):
    config = tmp_path / "tiny.json"
    config.write_text(tiny_config(**{"train.steps": 20}).to_json())
    model = tmp_path / "model"
    code = main(["train", str(surfaces), "--out", str(model), "--config", str(config), "-q",
                 "--set", f"inference.response={NAME}", "--set", "inference.image_score=max",
                 "--set", f"inference.responses.{NAME}.sigma=2.0"])
    assert code == 0, capsys.readouterr().err
    meta = json.loads((model / "radar.json").read_text())
    assert meta["config"]["inference"]["response"] == NAME
    assert meta["config"]["inference"]["responses"][NAME]["sigma"] == 2.0
    assert set(meta["response_statistics"]) == {"images"} and meta["response_statistics"]["images"] >= 10
    tensors = load_file(model / "response.safetensors")
    assert set(tensors) == {"mean", "spread"} and tensors["spread"].shape == (1,)

    radar = Radar.load(model)
    assert isinstance(radar.calibration_.response, ToyDeviation)
    assert radar.calibration_.response.settings.sigma == 2.0
    images = sorted((surfaces / "test").rglob("*.png"))
    expected = radar.predict_many(images)
    again = Radar.load(radar.save(tmp_path / "again")).predict_many(images)
    for a, b in zip(expected, again):
        assert a.score == b.score and np.array_equal(a.anomaly_map, b.anomaly_map)
    exported = Radar.load(radar.export(tmp_path / "model.onnx"))
    torch.testing.assert_close(exported.calibration_.response.mean_, radar.calibration_.response.mean_)
    for a, b in zip(expected, exported.predict_many(images)):
        assert b.score == pytest.approx(a.score, rel=1e-3, abs=1e-6)
        np.testing.assert_allclose(b.anomaly_map, a.anomaly_map, rtol=0, atol=1e-3)
    # the map finds the defects: the defective test images score above the good ones on the whole
    scores = {str(path): p.score for path, p in zip(images, expected)}
    good = [s for path, s in scores.items() if "/good/" in path]
    defective = [s for path, s in scores.items() if "/good/" not in path]
    assert np.median(defective) > np.median(good)
