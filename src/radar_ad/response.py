"""Blur + Sobel: from the predicted-noise map to the pixel anomaly map.

A torch implementation (separable convolutions, OpenCV's default
BORDER_REFLECT_101 border) rather than a call into OpenCV, so the same code
runs batched on the GPU and exports to ONNX; tests show it equal to
``cv2.GaussianBlur(x, (k, k), 0)`` followed by ``cv2.Sobel(..., ksize=k)``.
"""

from __future__ import annotations

import math

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
