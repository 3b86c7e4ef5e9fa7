"""The noise-energy response: the deficit part of the two-sided response alone."""

from __future__ import annotations

import numpy as np
import torch

from radar_ad import RadarConfig
from radar_ad.registry import RESPONSES
from radar_ad.responses.energy import EnergyResponse
from radar_ad.responses.two_sided import TwoSidedResponse


def _noise(seed: int, n: int = 4, size: int = 96) -> torch.Tensor:
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_removed_texture_lights_up_and_added_structure_does_not():
    config = RadarConfig().updated({"inference.response": "energy", "inference.map_sigma": 2.0})
    response = RESPONSES.get("energy")(config).fit([_noise(0), _noise(1)])
    noise = _noise(2, n=3)
    noise[1, :, 30:60, 30:60] *= 0.2  # texture removed: weak predicted noise
    noise[2, :, 30:60, 44:48] += 4.0  # structure added: the energy rises, no deficit
    output = response(noise)
    inside = np.s_[35:55, 35:55]
    assert output.anomaly_map.shape == (3, 96, 96) and output.features.shape == (3, 1)
    assert output.anomaly_map[1][inside].mean() > 5 * output.anomaly_map[0][inside].mean()
    assert output.features[1, 0] > 3 * output.features[0, 0]
    assert output.features[2, 0] <= output.features[0, 0] * 1.5


def test_deficit_equals_the_two_sided_responses_and_state_round_trips():
    config = RadarConfig()
    maps = [_noise(0, n=2, size=48), _noise(1, n=1, size=64)]
    energy = EnergyResponse(config).fit(maps)
    two_sided = TwoSidedResponse(config).fit(maps)
    assert energy.statistics_.energy_mean == two_sided.statistics_.energy_mean
    assert energy.statistics_.deficit_scale == two_sided.statistics_.deficit_scale
    noise = _noise(3, n=2, size=48)
    np.testing.assert_array_equal(energy(noise).features[:, 0], two_sided(noise).features[:, 1])
    restored = EnergyResponse(config)
    restored.load_state(energy.state())
    np.testing.assert_array_equal(restored(noise).anomaly_map, energy(noise).anomaly_map)
