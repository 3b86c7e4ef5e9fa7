"""From the predicted-noise map to the pixel anomaly map: the paper's blur +
Sobel response, and the two-sided response built on it (see below).

A torch implementation (separable convolutions, OpenCV's default
BORDER_REFLECT_101 border) rather than a call into OpenCV, so the same code
runs batched on the GPU and exports to ONNX; tests show it equal to
``cv2.GaussianBlur(x, (k, k), 0)`` followed by ``cv2.Sobel(..., ksize=k)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# OpenCV's fixed kernels for ksize <= 7 with sigma <= 0 (getGaussianKernel).
_SMALL_GAUSSIANS = {
    1: [1.0],
    3: [0.25, 0.5, 0.25],
    5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
    7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
}


def gaussian_kernel(ksize: int) -> torch.Tensor:
    """OpenCV's ``getGaussianKernel(ksize, 0)``."""
    if ksize in _SMALL_GAUSSIANS:
        return torch.tensor(_SMALL_GAUSSIANS[ksize], dtype=torch.float64)
    sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    x = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _binomial(n: int) -> torch.Tensor:
    return torch.tensor([math.comb(n, k) for k in range(n + 1)], dtype=torch.float64)


def sobel_kernels(ksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(derivative, smoothing) 1-D kernels of OpenCV's ``Sobel`` of order 1."""
    smooth = _binomial(ksize - 1)
    central = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    # [-1, 0, 1] smoothed by the binomial of order ksize - 3: e.g. [-1, -2, 0, 2, 1].
    deriv = F.conv1d(F.pad(_binomial(ksize - 3).view(1, 1, -1), (2, 2)),
                     central.flip(0).view(1, 1, -1)).view(-1)
    return deriv, smooth


def _separable(x: torch.Tensor, along_x: torch.Tensor, along_y: torch.Tensor) -> torch.Tensor:
    """Correlate ``(N, 1, H, W)`` with ``along_y`` (rows) then ``along_x``."""
    kx, ky = along_x.numel() // 2, along_y.numel() // 2
    wx = along_x.to(x).view(1, 1, 1, -1)
    wy = along_y.to(x).view(1, 1, -1, 1)
    x = F.conv2d(F.pad(x, (kx, kx, 0, 0), mode="reflect"), wx)
    return F.conv2d(F.pad(x, (0, 0, ky, ky), mode="reflect"), wy)


def blur(x: torch.Tensor, ksize: int = 5) -> torch.Tensor:
    """Gaussian blur of ``(N, 1, H, W)``, equal to ``cv2.GaussianBlur(x, (k, k), 0)``."""
    if ksize == 1:
        return x
    kernel = gaussian_kernel(ksize)
    return _separable(x, kernel, kernel)


def sobel_magnitude(x: torch.Tensor, ksize: int = 5) -> torch.Tensor:
    """Gradient magnitude of ``(N, 1, H, W)`` from OpenCV-equal Sobel x and y."""
    deriv, smooth = sobel_kernels(ksize)
    gx = _separable(x, deriv, smooth)
    gy = _separable(x, smooth, deriv)
    return torch.sqrt(gx * gx + gy * gy)


def response_map(noise_map: torch.Tensor, blur_ksize: int = 5, sobel_ksize: int = 5) -> torch.Tensor:
    """Pixel anomaly map ``(B, H, W)`` from a predicted-noise map ``(B, C, H, W)``.

    Colour channels are processed separately and combined as the root sum of
    squares of their Sobel magnitudes (the magnitude of the joint gradient).
    """
    batch, channels, height, width = noise_map.shape
    flat = noise_map.reshape(batch * channels, 1, height, width)
    magnitude = sobel_magnitude(blur(flat, blur_ksize), sobel_ksize)
    magnitude = magnitude.reshape(batch, channels, height, width)
    return magnitude[:, 0] if channels == 1 else magnitude.pow(2).sum(1).sqrt()


# ----------------------------------------------------------------- two-sided
# The paper's response only grows where a defect ADDS structure. On textures
# a defect often removes it instead (a smudge, a polished spot): the network
# then finds less to explain there and its predicted noise is weaker. The
# two-sided response keeps the paper's Sobel response as one part and adds the
# deficit of local noise energy as a second, both standardised against the
# normal calibration images, so either kind of departure lights up the map.


@dataclass
class ResponseStatistics:
    """Normal levels the two-sided response is measured against, learned from
    the noise maps of normal calibration images. ``*_scale`` are the parts'
    high quantiles, which put both parts on one scale in the combined map."""

    energy_mean: float
    energy_std: float
    structure_mean: float
    structure_std: float
    structure_scale: float = 1.0
    deficit_scale: float = 1.0

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Any) -> ResponseStatistics:
        """From :meth:`to_dict`'s output; ``ValueError`` for anything else."""
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) != names:
            raise ValueError(f"response_statistics must be an object with {', '.join(sorted(names))}")
        return cls(**{k: float(v) for k, v in data.items()})


QUANTILE_SAMPLE = 8_000_000  # pixels per part behind the scales' quantiles (float64: 128 MB)


def local_energy(noise_map: torch.Tensor, window: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H, W)``: log mean squared predicted noise
    over ``window`` x ``window`` neighbourhoods (mirrored at the border)."""
    squared = noise_map.double().pow(2).mean(1, keepdim=True)
    height, width = squared.shape[-2:]
    wy, wx = min(window, height), min(window, width)
    padded = F.pad(squared, (wx // 2, wx - 1 - wx // 2, wy // 2, wy - 1 - wy // 2), mode="reflect")
    return torch.log(F.avg_pool2d(padded, (wy, wx), stride=1) + 1e-12)[:, 0]


def response_parts(noise_map: torch.Tensor, statistics: ResponseStatistics, energy_window: int,
                   blur_ksize: int = 5, sobel_ksize: int = 5) -> torch.Tensor:
    """``(B, C, H, W)`` noise maps -> ``(B, 2, H, W)``: the Sobel response
    above its normal level and the local noise energy below its normal level,
    each in standard deviations of the calibration pixels (0 where normal
    or on the other side)."""
    structure = response_map(noise_map, blur_ksize, sobel_ksize).double()
    energy = local_energy(noise_map, energy_window)
    excess = (structure - statistics.structure_mean) / statistics.structure_std
    deficit = (statistics.energy_mean - energy) / statistics.energy_std
    return torch.stack([excess, deficit], dim=1).clamp_min(0)


def fit_response_statistics(noise_maps: list[torch.Tensor], energy_window: int, blur_ksize: int = 5,
                            sobel_ksize: int = 5, quantile: float = 0.999) -> ResponseStatistics:
    """Pooled pixel statistics of normal ``(B, C, H, W)`` noise maps: running
    moments, then the parts' quantiles from an evenly strided sample of at
    most :data:`QUANTILE_SAMPLE` pixels, so memory stays near one map's."""
    count, sums = 0, torch.zeros(4, dtype=torch.float64)  # energy, energy^2, structure, structure^2
    for noise in noise_maps:
        structure = response_map(noise, blur_ksize, sobel_ksize).double()
        energy = local_energy(noise, energy_window)
        count += energy.numel()
        sums += torch.stack([energy.sum(), energy.pow(2).sum(), structure.sum(), structure.pow(2).sum()])
    mean_e, mean_s = float(sums[0] / count), float(sums[2] / count)
    # sample standard deviations (n - 1), as torch.std
    std_e = max(float(sums[1] - count * mean_e**2) / max(count - 1, 1), 0.0) ** 0.5
    std_s = max(float(sums[3] - count * mean_s**2) / max(count - 1, 1), 0.0) ** 0.5
    statistics = ResponseStatistics(mean_e, max(std_e, 1e-12), mean_s, max(std_s, 1e-12))
    step = max(1, math.ceil(count / QUANTILE_SAMPLE))
    sample = torch.cat([response_parts(noise, statistics, energy_window, blur_ksize, sobel_ksize)
                        .transpose(0, 1).flatten(1)[:, ::step] for noise in noise_maps], dim=1)
    scales = np.quantile(sample.numpy(), quantile, axis=1)
    statistics.structure_scale, statistics.deficit_scale = (max(float(s), 1e-6) for s in scales)
    return statistics


def two_sided_map(parts: torch.Tensor, statistics: ResponseStatistics, sigma: float) -> torch.Tensor:
    """``(B, 2, H, W)`` parts -> ``(B, H, W)`` pixel anomaly map: the larger
    part in units of its normal high quantile, smoothed by a Gaussian of
    ``sigma`` px (a defect's deficit is a region, not an edge)."""
    scales = torch.tensor([statistics.structure_scale, statistics.deficit_scale], dtype=parts.dtype,
                          device=parts.device)
    combined = (parts / scales.view(1, 2, 1, 1)).amax(1, keepdim=True)
    return gaussian_smooth(combined, sigma)[:, 0].float()


def gaussian_smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing of ``(N, 1, H, W)``; the kernel is truncated at
    3 sigma and at the image size (mirrored border)."""
    if sigma <= 0:
        return x
    height, width = x.shape[-2:]
    radius = max(1, min(math.ceil(3 * sigma), height - 1, width - 1))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    return _separable(x, kernel / kernel.sum(), kernel / kernel.sum())
