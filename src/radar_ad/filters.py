"""The image filters of the responses: OpenCV-equal Gaussian blur and
Sobel gradient magnitude, Gaussian smoothing and local noise energy, on
``(N, 1, H, W)`` or ``(B, C, H, W)`` tensors.

A torch implementation (separable convolutions, OpenCV's default
BORDER_REFLECT_101 border) rather than a call into OpenCV, so the same code
runs batched on the GPU and exports to ONNX; tests show it equal to
``cv2.GaussianBlur(x, (k, k), 0)`` followed by ``cv2.Sobel(..., ksize=k)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

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


# :func:`_separable` multiplies by banded matrices (one BLAS call per axis)
# instead of convolving with a 1-D kernel, which runs far below the
# machine's rate, while the matrices' work (n per pixel) stays within
# BANDED_PER_TAP times the kernel's (its taps per pixel), and their size
# within BANDED_MAX pixels a side (a few MB each, a bounded cache of
# BANDED_CACHED: room for every kernel of every pyramid level, both axes,
# of a model's images).
BANDED_PER_TAP = 64
BANDED_MAX = 1024
BANDED_CACHED = 48


@functools.lru_cache(maxsize=BANDED_CACHED)
def _banded(length: int, kernel: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(length, length)`` matrix B such that ``B @ v`` is ``v`` mirrored at
    both ends (``F.pad`` ``reflect``) correlated with ``kernel`` (odd length,
    its half-width below ``length``)."""
    half = len(kernel) // 2
    source = torch.arange(length)[:, None] + torch.arange(-half, half + 1)[None]
    source = source.abs()  # mirrored before the first pixel ...
    source = torch.where(source > length - 1, 2 * (length - 1) - source, source)  # ... and after the last
    rows = torch.arange(length)[:, None].expand_as(source)
    weights = torch.tensor(kernel, dtype=torch.float64).expand_as(source)
    matrix = torch.zeros(length, length, dtype=torch.float64)
    matrix.index_put_((rows.reshape(-1), source.reshape(-1)), weights.reshape(-1), accumulate=True)
    return matrix.to(dtype=dtype, device=device)


def _separable(x: torch.Tensor, along_x: torch.Tensor, along_y: torch.Tensor) -> torch.Tensor:
    """Correlate ``(N, 1, H, W)`` with ``along_y`` (rows) then ``along_x``,
    mirrored at the border."""
    height, width = x.shape[-2:]
    kx, ky = along_x.numel() // 2, along_y.numel() // 2
    longest = max(height, width)
    taps = min(along_x.numel(), along_y.numel())
    if longest <= min(BANDED_MAX, BANDED_PER_TAP * taps) and kx < width and ky < height:
        rows = _banded(width, tuple(along_x.tolist()), x.dtype, x.device)
        columns = _banded(height, tuple(along_y.tolist()), x.dtype, x.device)
        return torch.matmul(columns, torch.matmul(x, rows.T))
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


def blur_sobel_map(noise_map: torch.Tensor, blur_ksize: int = 5, sobel_ksize: int = 5) -> torch.Tensor:
    """Pixel anomaly map ``(B, H, W)`` from a predicted-noise map ``(B, C, H, W)``.

    Colour channels are processed separately and combined as the root sum of
    squares of their Sobel magnitudes (the magnitude of the joint gradient).
    """
    batch, channels, height, width = noise_map.shape
    flat = noise_map.reshape(batch * channels, 1, height, width)
    magnitude = sobel_magnitude(blur(flat, blur_ksize), sobel_ksize)
    magnitude = magnitude.reshape(batch, channels, height, width)
    return magnitude[:, 0] if channels == 1 else magnitude.pow(2).sum(1).sqrt()


def local_energy(noise_map: torch.Tensor, window: int, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H, W)``: log mean squared predicted noise
    over ``window`` x ``window`` neighbourhoods (mirrored at the border).
    ``size``: the (H, W) of the whole map when ``noise_map`` is a region of
    it (the window is clipped to the whole map, not to the region)."""
    squared = noise_map.double().pow(2).mean(1, keepdim=True)
    height, width = size or squared.shape[-2:]
    wy, wx = min(window, height), min(window, width)
    padded = F.pad(squared, (wx // 2, wx - 1 - wx // 2, wy // 2, wy - 1 - wy // 2), mode="reflect")
    # the box mean, summed along rows then along columns (separable, and
    # several times faster than a stride-1 average pooling on the CPU)
    total = padded.unfold(-1, wx, 1).sum(-1).unfold(-2, wy, 1).sum(-1)
    return torch.log(total / (wy * wx) + 1e-12)[:, 0]


def smoothing_radius(sigma: float, size: tuple[int, int]) -> int:
    """The half-width of :func:`gaussian_smooth`'s kernel on an (H, W) map
    (0: no smoothing): 3 sigma, at most the image size less one."""
    if sigma <= 0:
        return 0
    return max(1, min(math.ceil(3 * sigma), size[0] - 1, size[1] - 1))


def gaussian_smooth(x: torch.Tensor, sigma: float, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Gaussian smoothing of ``(N, 1, H, W)``; the kernel is truncated at
    3 sigma and at the image size (mirrored border). ``size``: the (H, W) of
    the whole map when ``x`` is a region of it."""
    if sigma <= 0:
        return x
    radius = smoothing_radius(sigma, size or (x.shape[-2], x.shape[-1]))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    return _separable(x, kernel / kernel.sum(), kernel / kernel.sum())


def smoothings(x: torch.Tensor, sigmas: Sequence[float], size: tuple[int, int] | None = None) -> torch.Tensor:
    """``(N, 1, H, W)`` -> ``(N, S, H, W)``: :func:`gaussian_smooth` at each of ``sigmas``."""
    return torch.cat([gaussian_smooth(x, sigma, size) for sigma in sigmas], dim=1)


def scale_space_max(x: torch.Tensor, sigmas: Sequence[float], quantiles: Sequence[float],
                    size: tuple[int, int] | None = None) -> torch.Tensor:
    """``(N, 1, H, W)`` -> ``(N, 1, H, W)``: the largest of the
    :func:`smoothings` of ``x``, each divided by its entry of ``quantiles``
    (its high quantile on normal images), so that every smoothing is on
    one scale."""
    scale = torch.tensor([max(q, 1e-12) for q in quantiles], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (smoothings(x, sigmas, size) / scale).amax(1, keepdim=True)


def smoothed_map(x: torch.Tensor, sigma: float, sigmas: Sequence[float] = (), quantiles: Sequence[float] = (),
                 size: tuple[int, int] | None = None) -> torch.Tensor:
    """``(N, 1, H, W)`` -> ``(N, H, W)`` float32 pixel map: with ``sigmas``
    (and their normal high ``quantiles``) the :func:`scale_space_max`, else
    one Gaussian of ``sigma`` px."""
    if sigmas:
        return scale_space_max(x, sigmas, quantiles, size)[:, 0].float()
    return gaussian_smooth(x, sigma, size)[:, 0].float()
