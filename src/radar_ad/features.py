"""Image features from response maps: the paper's two (global and largest
window L2 norm of the Sobel response), and the largest window RMS of each
part of a multi-part response. Each response (:mod:`radar_ad.responses`)
says which of these it uses.

``feature_norm="rms"`` (the default) divides each L2 norm by the square root
of the number of pixels it sums over: the global feature becomes the
root-mean-square response and the window feature the largest window RMS.
That keeps one model's scores comparable across image sizes (real datasets
mix sizes; a raw sum grows with the pixel count). ``"sum"`` gives the paper's
raw L2 norms for a like-for-like comparison on fixed-size images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FEATURE_NAMES = ("global_l2", "window_max_l2")


def image_features(response: torch.Tensor, window: int = 20, stride: int = 20,
                   norm: str = "rms") -> torch.Tensor:
    """``(B, H, W)`` response maps -> ``(B, 2)`` features: the L2 norm of the
    whole map and the largest L2 norm over ``window`` x ``window`` windows
    (stride ``stride``; clipped to the image when it is smaller)."""
    squared = response.double().pow(2).unsqueeze(1)  # (B, 1, H, W)
    height, width = squared.shape[-2:]
    wh, ww = min(window, height), min(window, width)
    window_mean = window_means(squared, window, stride).amax(1)
    global_mean = squared.flatten(1).mean(1)
    if norm == "sum":
        global_mean, window_mean = global_mean * height * width, window_mean * wh * ww
    elif norm != "rms":
        raise ValueError(f"norm must be 'rms' or 'sum', got {norm!r}")
    return torch.stack([global_mean.sqrt(), window_mean.sqrt()], dim=1)


def window_max_rms(parts: torch.Tensor, window: int = 20, stride: int = 20) -> torch.Tensor:
    """``(B, P, H, W)`` response parts -> ``(B, P)``: each part's largest
    window RMS. (No global feature: on DAGM's validation split the global RMS
    of a part only diluted the window maximum.)"""
    batch, n_parts = parts.shape[:2]
    squared = parts.double().pow(2).reshape(batch * n_parts, 1, *parts.shape[-2:])
    return window_means(squared, window, stride).amax(1).sqrt().reshape(batch, n_parts)


def window_means(squared: torch.Tensor, window: int, stride: int) -> torch.Tensor:
    """``(B, 1, H, W)`` -> ``(B, n_windows)`` means over ``window`` x
    ``window`` windows, each side clipped to the image when it is smaller."""
    height, width = squared.shape[-2:]
    return F.avg_pool2d(squared, (min(window, height), min(window, width)), stride=stride).flatten(1)

