"""The two-sided response (the default).

The paper's response only grows where a defect ADDS structure. On textures a
defect often removes it instead (a smudge, a polished spot): the network then
finds less to explain there and its predicted noise is weaker. The two-sided
response keeps the paper's Sobel response as one part and adds the deficit of
local noise energy as a second, both standardised against the normal
calibration images, so either kind of departure lights up the map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..features import SquareSums, window_max_features
from ..filters import blur_sobel_map, local_energy, smoothed_map, smoothing_radius, smoothings
from ..registry import RESPONSES
from ..response import Response, RunningMoments, Statistics, map_statistics, strided_quantiles
from .energy import energy_deficit


@dataclass
class ResponseStatistics(Statistics):
    """Normal levels the two-sided response is measured against, learned from
    the noise maps of normal calibration images. ``*_scale`` are the parts'
    high quantiles, which put both parts on one scale in the combined map;
    ``map_quantiles`` the high quantiles of the combined map at each of
    ``inference.map_sigmas`` (none: a model with one smoothing)."""

    energy_mean: float
    energy_std: float
    structure_mean: float
    structure_std: float
    structure_scale: float = 1.0
    deficit_scale: float = 1.0
    map_quantiles: tuple[float, ...] = ()


def response_parts(noise_map: torch.Tensor, statistics: ResponseStatistics, energy_window: int,
                   blur_ksize: int = 5, sobel_ksize: int = 5, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``(B, C, H, W)`` noise maps -> ``(B, 2, H, W)``: the Sobel response
    above its normal level and the local noise energy below its normal level,
    each in standard deviations of the calibration pixels (0 where normal
    or on the other side). ``size``: the whole map's (H, W) when
    ``noise_map`` is a region of it."""
    structure = blur_sobel_map(noise_map, blur_ksize, sobel_ksize).double()
    excess = ((structure - statistics.structure_mean) / statistics.structure_std).clamp_min(0)
    deficit = energy_deficit(noise_map, statistics.energy_mean, statistics.energy_std, energy_window, size)
    return torch.stack([excess, deficit], dim=1)


def fit_response_statistics(noise_maps: Sequence[torch.Tensor], energy_window: int, blur_ksize: int = 5,
                            sobel_ksize: int = 5, quantile: float = 0.999,
                            map_sigmas: Sequence[float] = ()) -> ResponseStatistics:
    """Pooled pixel statistics of normal ``(B, C, H, W)`` noise maps: running
    moments, then the parts' quantiles, then the combined map's at each of
    ``map_sigmas``, each from an evenly strided sample, so memory stays near
    one map's."""
    energy, structure = RunningMoments(), RunningMoments()
    for noise in noise_maps:
        structure.add(blur_sobel_map(noise, blur_ksize, sobel_ksize).double())
        energy.add(local_energy(noise, energy_window))
    statistics = ResponseStatistics(energy.mean, max(energy.std, 1e-12), structure.mean, max(structure.std, 1e-12))
    parts = (response_parts(noise, statistics, energy_window, blur_ksize, sobel_ksize) for noise in noise_maps)
    scales = strided_quantiles(parts, energy.count, quantile)
    statistics.structure_scale, statistics.deficit_scale = (max(s, 1e-6) for s in scales)
    if map_sigmas:
        combined = (smoothings(combined_parts(response_parts(noise, statistics, energy_window, blur_ksize,
                                                             sobel_ksize), statistics), map_sigmas)
                    for noise in noise_maps)
        statistics.map_quantiles = tuple(max(q, 1e-6) for q in strided_quantiles(combined, energy.count, quantile))
    return statistics


def combined_parts(parts: torch.Tensor, statistics: ResponseStatistics) -> torch.Tensor:
    """``(B, 2, H, W)`` parts -> ``(B, 1, H, W)``: the larger part in units of its normal high quantile."""
    scales = torch.tensor([statistics.structure_scale, statistics.deficit_scale], dtype=parts.dtype,
                          device=parts.device)
    return (parts / scales.view(1, 2, 1, 1)).amax(1, keepdim=True)


def two_sided_map(parts: torch.Tensor, statistics: ResponseStatistics, sigma: float,
                  size: tuple[int, int] | None = None, sigmas: Sequence[float] = ()) -> torch.Tensor:
    """``(B, 2, H, W)`` parts -> ``(B, H, W)`` pixel anomaly map: the
    :func:`combined_parts`, smoothed (a defect's deficit is a region, not an
    edge): with ``sigmas`` (and the statistics' ``map_quantiles`` of them)
    the largest of its Gaussian smoothings of those px, each in units of
    its normal high quantile; else one Gaussian of ``sigma`` px. ``size``:
    the whole map's (H, W) when ``parts`` is a region of it."""
    return smoothed_map(combined_parts(parts, statistics), sigma, sigmas, statistics.map_quantiles, size)


@RESPONSES.register("two_sided")
class TwoSidedResponse(Response):
    """S = Gaussian blur then Sobel gradient magnitude of the predicted noise
    (kernel sizes blur_ksize, sobel_ksize); E = log of the mean squared noise in
    energy_window px windows (mirrored border). Parts max(0, (S -
    structure_mean) / structure_std) and max(0, (energy_mean - E) / energy_std)
    from response_statistics; map = the larger part over its scale, at each
    Gaussian smoothing of map_sigmas px over its normal high quantile, the
    largest (one Gaussian of map_sigma px when map_sigmas is empty);
    features = each part's largest window RMS.
    """

    feature_names = ("window_max_structure", "window_max_deficit")
    candidate = True
    statistics_: ResponseStatistics

    def fit(self, noise_maps: Sequence[torch.Tensor]) -> TwoSidedResponse:
        inference = self.inference
        self.statistics_ = fit_response_statistics(noise_maps, inference.energy_window, inference.blur_ksize,
                                                   inference.sobel_ksize, self.pixel_quantile, inference.map_sigmas)
        return self

    def state(self) -> dict[str, float | list[float]]:
        return self.statistics_.to_dict()

    def load_state(self, state: object) -> None:
        self.statistics_ = map_statistics(ResponseStatistics, state, self.inference.map_sigmas)

    def context(self, size: tuple[int, int]) -> tuple[int, int]:
        inference = self.inference
        return (max(inference.blur_ksize // 2 + inference.sobel_ksize // 2, inference.energy_window // 2),
                smoothing_radius(max(inference.map_sigmas, default=inference.map_sigma), size))

    def feature_maps(self, noise_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        inference = self.inference
        return response_parts(noise_map, self.statistics_, inference.energy_window, inference.blur_ksize,
                              inference.sobel_ksize, size)

    def anomaly(self, maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return two_sided_map(maps, self.statistics_, self.inference.map_sigma, size, self.inference.map_sigmas)

    def features(self, sums: SquareSums) -> torch.Tensor:
        return window_max_features(sums)
