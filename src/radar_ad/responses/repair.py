"""The repair response: how far the network's one-step repair moves a pixel.

A network trained defect-aware (``network.repair``, :mod:`radar_ad.training`)
learns, beside the noise, the way from a patch with a synthetic defect back
to the normal patch, and to leave a normal patch where it is. Where an image
departs from what the network knows as normal, the repair x0_hat - x is
large. On stochastic textures, whose normal grain and streaks make the
noise map busy everywhere, that magnitude can single out a defect where the
noise map's structure cannot. The network learned the repair from the same
generic synthetic defects the self-validation pastes in, so the
self-validation cannot judge it fairly (it would favour it everywhere):
this response is chosen by name (``inference.response: repair``), never by
``auto``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..config import RadarConfig
from ..features import SquareSums, window_max_features
from ..filters import smoothed_map, smoothing_radius, smoothings
from ..registry import RESPONSES
from ..response import Response, RunningMoments, Statistics, map_statistics, strided_quantiles


@dataclass
class RepairStatistics(Statistics):
    """The normal level of the repair's magnitude (mean, standard
    deviation), its excess's normal high quantile (``repair_scale``) and,
    per smoothing of ``inference.map_sigmas``, the map's normal high
    quantile (``map_quantiles``; none: one smoothing)."""

    repair_mean: float
    repair_std: float
    repair_scale: float = 1.0
    map_quantiles: tuple[float, ...] = ()


def repair_magnitude(repair: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` repair x0_hat - x -> ``(B, 1, H, W)`` float64: its
    absolute value, averaged over the channels."""
    return repair.double().abs().mean(1, keepdim=True)


@RESPONSES.register("repair")
class RepairResponse(Response):
    """R = mean over the channels of |x0_hat - x|, the one-step repair
    (the network's repair output); part max(0, (R - repair_mean) /
    repair_std) from response_statistics; map = the part over its normal
    high quantile, at each Gaussian smoothing of map_sigmas px over its
    normal high quantile, the largest (one Gaussian of map_sigma px when
    map_sigmas is empty); feature = the part's largest window RMS.
    """

    reads: ClassVar[str] = "repair"
    feature_names = ("window_max_repair",)
    statistics_: RepairStatistics

    def __init__(self, config: RadarConfig) -> None:
        if not config.network.repair:
            raise ValueError("the repair response reads the network's repair output: train with network.repair "
                             "true (the default)")
        super().__init__(config)

    @staticmethod
    def _part(repair: torch.Tensor, statistics: RepairStatistics) -> torch.Tensor:
        return ((repair_magnitude(repair) - statistics.repair_mean) / statistics.repair_std).clamp_min(0)

    def fit(self, noise_maps: Sequence[torch.Tensor]) -> RepairResponse:
        moments = RunningMoments()
        for repair in noise_maps:
            moments.add(repair_magnitude(repair))
        statistics = RepairStatistics(moments.mean, max(moments.std, 1e-12))
        parts = (self._part(repair, statistics) for repair in noise_maps)
        statistics.repair_scale = max(strided_quantiles(parts, moments.count, self.pixel_quantile)[0], 1e-6)
        sigmas = self.inference.map_sigmas
        if sigmas:
            scaled = (smoothings(self._part(repair, statistics) / statistics.repair_scale, sigmas)
                      for repair in noise_maps)
            statistics.map_quantiles = tuple(max(q, 1e-6) for q in strided_quantiles(scaled, moments.count,
                                                                                     self.pixel_quantile))
        self.statistics_ = statistics
        return self

    def state(self) -> dict[str, float | list[float]]:
        return self.statistics_.to_dict()

    def load_state(self, state: object) -> None:
        self.statistics_ = map_statistics(RepairStatistics, state, self.inference.map_sigmas)

    def context(self, size: tuple[int, int]) -> tuple[int, int]:
        inference = self.inference
        return 0, smoothing_radius(max(inference.map_sigmas, default=inference.map_sigma), size)

    def feature_maps(self, noise_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self._part(noise_map, self.statistics_)

    def anomaly(self, maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        statistics, inference = self.statistics_, self.inference
        return smoothed_map(maps / statistics.repair_scale, inference.map_sigma, inference.map_sigmas,
                            statistics.map_quantiles, size)

    def features(self, sums: SquareSums) -> torch.Tensor:
        return window_max_features(sums)
