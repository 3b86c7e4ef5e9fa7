"""The noise-energy response: the deficit part of the two-sided response
alone, for surfaces whose defects remove texture rather than add edges.

:func:`energy_deficit` is that part, for both responses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..features import SquareSums, window_max_features
from ..filters import gaussian_smooth, local_energy, smoothing_radius
from ..registry import RESPONSES
from ..response import Response, RunningMoments, Statistics, strided_quantiles


@dataclass
class EnergyStatistics(Statistics):
    """The normal level of the local noise energy (mean, standard deviation)
    and the deficit's normal high quantile (``deficit_scale``)."""

    energy_mean: float
    energy_std: float
    deficit_scale: float = 1.0


def energy_deficit(noise_map: torch.Tensor, energy_mean: float, energy_std: float, energy_window: int,
                   size: tuple[int, int] | None = None) -> torch.Tensor:
    """``(B, C, H, W)`` noise maps -> ``(B, H, W)`` float64: how far the local
    noise energy (:func:`~radar_ad.filters.local_energy`) lies below its
    normal level ``energy_mean``, in standard deviations ``energy_std`` of
    the calibration pixels; 0 at or above it. ``size``: the whole map's
    (H, W) when ``noise_map`` is a region of it."""
    energy = local_energy(noise_map, energy_window, size)
    return ((energy_mean - energy) / energy_std).clamp_min(0)


@RESPONSES.register("energy")
class EnergyResponse(Response):
    """E = log of the mean squared predicted noise in energy_window px windows
    (mirrored border); part max(0, (energy_mean - E) / energy_std) from
    response_statistics; map = Gaussian (map_sigma px) of the part over its
    normal high quantile; feature = the part's largest window RMS.
    """

    feature_names = ("window_max_deficit",)
    statistics_: EnergyStatistics

    def _deficit(self, noise_map: torch.Tensor, statistics: EnergyStatistics,
                 size: tuple[int, int] | None = None) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, 1, H, W)`` energy deficit in standard deviations."""
        return energy_deficit(noise_map, statistics.energy_mean, statistics.energy_std,
                              self.inference.energy_window, size)[:, None]

    def fit(self, noise_maps: Sequence[torch.Tensor]) -> EnergyResponse:
        moments = RunningMoments()
        for noise in noise_maps:
            moments.add(local_energy(noise, self.inference.energy_window))
        statistics = EnergyStatistics(moments.mean, max(moments.std, 1e-12))
        deficits = (self._deficit(noise, statistics) for noise in noise_maps)
        statistics.deficit_scale = max(strided_quantiles(deficits, moments.count, self.pixel_quantile)[0], 1e-6)
        self.statistics_ = statistics
        return self

    def state(self) -> dict[str, float | list[float]]:
        return self.statistics_.to_dict()

    def load_state(self, state: object) -> None:
        self.statistics_ = EnergyStatistics.from_dict(state)

    def context(self, size: tuple[int, int]) -> tuple[int, int]:
        return self.inference.energy_window // 2, smoothing_radius(self.inference.map_sigma, size)

    def feature_maps(self, noise_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self._deficit(noise_map, self.statistics_, size)

    def anomaly(self, maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return gaussian_smooth(maps / self.statistics_.deficit_scale, self.inference.map_sigma, size)[:, 0].float()

    def features(self, sums: SquareSums) -> torch.Tensor:
        return window_max_features(sums)
