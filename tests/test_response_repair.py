"""The repair response: the magnitude of the one-step repair, measured
against its normal level, on each pyramid level."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from radar_ad import Radar, RadarConfig
from radar_ad.bench.candidates import candidate_options
from radar_ad.bench.methods import radar_rows
from radar_ad.errors import ConfigError
from radar_ad.registry import RESPONSES
from radar_ad.response import LevelFusion, build_response
from radar_ad.responses.repair import RepairResponse
from radar_ad.selection import candidates


def _repair(seed: int, n: int = 4, size: int = 96, spread: float = 0.02) -> torch.Tensor:
    return spread * torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_where_the_repair_moves_the_image_lights_up_and_normal_does_not():
    config = RadarConfig().updated({"inference.response": "repair", "inference.map_sigmas": [1, 2, 4]})
    response = RESPONSES.get("repair")(config).fit([_repair(0), _repair(1)])
    repair = _repair(2, n=3)
    repair[1, :, 30:60, 30:60] += 0.3  # the network moves this region back towards normal
    repair[2, :, 40:43, 40:43] -= 0.5  # a small pit, repaired the other way
    output = response(repair)
    assert output.anomaly_map.shape == (3, 96, 96) and output.features.shape == (3, 1)
    normal_top = output.anomaly_map[0].max()
    assert output.anomaly_map[1, 35:55, 35:55].min() > 3 * normal_top
    assert output.anomaly_map[2, 40:43, 40:43].min() > 3 * normal_top
    assert output.anomaly_map[2, 70:, 70:].max() <= normal_top * 1.5
    assert (output.features[1:, 0] > 3 * output.features[0, 0]).all()


def test_statistics_round_trip_and_a_mismatched_model_file_is_refused():
    config = RadarConfig().updated({"inference.response": "repair"})
    maps = [_repair(0, n=2, size=48), _repair(1, n=1, size=64)]
    response = RepairResponse(config).fit(maps)
    statistics = response.statistics_
    pooled = torch.cat([m.abs().flatten() for m in maps]).double()
    assert statistics.repair_mean == pytest.approx(float(pooled.mean()), rel=1e-9)
    assert statistics.repair_std == pytest.approx(float(pooled.std()), rel=1e-6)
    assert len(statistics.map_quantiles) == len(config.inference.map_sigmas)
    restored = RepairResponse(config)
    restored.load_state(response.state())
    repair = _repair(3, n=2, size=48)
    np.testing.assert_array_equal(restored(repair).anomaly_map, response(repair).anomaly_map)
    one_smoothing = RepairResponse(config.updated({"inference.map_sigmas": []}))
    with pytest.raises(ValueError, match="map_quantiles"):
        one_smoothing.load_state(response.state())


def test_it_reads_the_repair_of_every_level_and_only_by_name():
    config = RadarConfig().updated({"inference.response": "repair", "inference.scales": [1, 2]})
    fused = build_response(config, image_score="features")
    assert isinstance(fused, LevelFusion) and fused.level_feature_names() == (
        "window_max_repair", "window_max_repair@2")
    # never among the self-validation's candidates: the network learned the
    # repair from the very synthetic defects the self-validation pastes in
    auto = RadarConfig().updated({"inference.response": "auto", "inference.scales": None,
                                  "inference.image_score": "auto"})
    assert "repair" not in {candidate.response for candidate in candidates(auto)}


def test_a_probe_scores_it_beside_the_candidates_when_asked():
    model = SimpleNamespace(config=RadarConfig())  # the probes read only the model's config here
    _, plain = candidate_options(model)
    _, both = candidate_options(model, also=["repair", "two_sided"])  # two_sided is a candidate already
    assert both[:len(plain)] == plain
    extra = both[len(plain):]
    assert {option.response for option in extra} == {"repair"} and len(extra) == 9
    assert {option.scales for option in extra} == {(1,), (1, 2), (1, 2, 4)}


def test_a_network_without_a_repair_output_is_refused_before_training():
    with pytest.raises(ConfigError, match="no repair output"):
        RadarConfig().updated({"inference.response": "repair", "network.repair": False, "train.defect_share": 0})
    plain = RadarConfig().updated({"network.repair": False, "train.defect_share": 0})
    with pytest.raises(ValueError, match="network.repair"):
        RepairResponse(plain)
    # the benchmark compares it only on a network that has the output
    assert "radar_repair" in {row.key for row in radar_rows()}
    assert "radar_repair" not in {row.key for row in radar_rows(plain)}


def test_a_model_with_it_finds_the_defects_and_saves_and_loads(fitted, surfaces, tmp_path):
    radar, _ = fitted
    normal = sorted((surfaces / "train" / "good").glob("*.png"))
    twin = radar.with_settings({"inference.response": "repair", "inference.image_score": "max"})
    twin = twin.refit_calibration(normal[:24], conformal=normal[24:36])
    images = sorted((surfaces / "test").rglob("*.png"))
    expected = twin.predict_many(images)
    labels = np.array([path.parent.name != "good" for path in images])
    scores = np.array([prediction.score for prediction in expected])
    # the tiny network's repair already ranks most defective surfaces above the normal ones
    assert scores[labels].mean() > scores[~labels].mean()
    loaded = Radar.load(twin.save(tmp_path / "model"))
    assert loaded.config.inference.response == "repair"
    for a, b in zip(expected, loaded.predict_many(images)):
        assert a.score == b.score and np.array_equal(a.anomaly_map, b.anomaly_map)
