"""The two image features of the paper, computed from the response map, and
an optional third one from the noise map for defects that remove structure.

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
DEFICIT_NAME = "window_min_noise_rms"


def image_features(response: torch.Tensor, window: int = 20, stride: int = 20,
                   norm: str = "rms") -> torch.Tensor:
    """``(B, H, W)`` response maps -> ``(B, 2)`` features: the L2 norm of the
    whole map and the largest L2 norm over ``window`` x ``window`` windows
    (stride ``stride``; clipped to the image when it is smaller)."""
    squared = response.double().pow(2).unsqueeze(1)  # (B, 1, H, W)
    height, width = squared.shape[-2:]
    wh, ww = min(window, height), min(window, width)
    window_mean = _window_means(squared, window, stride).amax(1)
    global_mean = squared.flatten(1).mean(1)
    if norm == "sum":
        global_mean, window_mean = global_mean * height * width, window_mean * wh * ww
    elif norm != "rms":
        raise ValueError(f"norm must be 'rms' or 'sum', got {norm!r}")
    return torch.stack([global_mean.sqrt(), window_mean.sqrt()], dim=1)


def energy_deficit(noise_map: torch.Tensor, window: int = 20, stride: int = 20) -> torch.Tensor:
    """``(B, C, H, W)`` noise maps -> ``(B,)``: the smallest RMS predicted
    noise over ``window`` x ``window`` windows.

    The paper's features only grow when a defect adds structure. A defect
    that removes it (a smudge, a polished spot) instead leaves a region where
    the network finds less to explain, so its predicted noise is weaker: this
    feature drops there, and the one-class model, which sees it standardised
    and scores departures on either side of the normal range, flags it.
    """
    squared = noise_map.double().pow(2).mean(1, keepdim=True)  # (B, 1, H, W)
    return _window_means(squared, window, stride).amin(1).sqrt()


def _window_means(squared: torch.Tensor, window: int, stride: int) -> torch.Tensor:
    """``(B, 1, H, W)`` -> ``(B, n_windows)`` means over ``window`` x
    ``window`` windows, each side clipped to the image when it is smaller."""
    height, width = squared.shape[-2:]
    return F.avg_pool2d(squared, (min(window, height), min(window, width)), stride=stride).flatten(1)


def feature_names(with_deficit: bool) -> tuple[str, ...]:
    return FEATURE_NAMES + ((DEFICIT_NAME,) if with_deficit else ())
