"""Image features from response maps: the paper's two (the global and the
largest window norm of the Sobel response, :data:`FEATURE_NAMES`), the
largest window RMS of each part of a multi-part response, and the map
statistics that can be an image's score on their own (:func:`map_scores`:
the largest local mean of the anomaly map, raw or standardised within the
image). Each response
(:mod:`radar_ad.responses`) says which features it gives; the setting
``inference.image_score`` says whether those or a map statistic score the
image.

``feature_norm="rms"`` (the default) divides each L2 norm by the square root
of the number of pixels it sums over: the global feature becomes the
root-mean-square response and the window feature the largest window RMS.
That keeps one model's scores comparable across image sizes (real datasets
mix sizes; a raw sum grows with the pixel count). ``"sum"`` gives the paper's
raw L2 norms for a like-for-like comparison on fixed-size images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# The paper's two features (:func:`rms_features`), each the norm ``feature_norm``
# names: the RMS by default, the L2 norm with "sum". Model files keep the names
# they were written with; nothing reads them back.
FEATURE_NAMES = ("global_norm", "window_max_norm")


@dataclass
class SquareSums:
    """What every feature here is made of, per image and part of
    ``(B, P, H, W)`` maps: the largest mean of the squared map over the
    windows (``window_max``) and the sum of its squares (``total``), both
    ``(B, P)`` float64, with the map's pixel count and a window's.

    Sums of the pieces of a map that own disjoint pixels and windows
    (:func:`square_sums` with ``owned``) :meth:`merge` into those of the whole
    map: what lets a large image be analysed in tiles."""

    window_max: torch.Tensor
    total: torch.Tensor
    pixels: int
    window_pixels: int

    def merge(self, other: SquareSums) -> SquareSums:
        return SquareSums(torch.maximum(self.window_max, other.window_max), self.total + other.total,
                          self.pixels, self.window_pixels)


def _window_starts(low: int, high: int, last: int, stride: int) -> tuple[int, int]:
    """First and last window start (multiples of ``stride``, at most
    ``last``) in [low, high); first > last when there is none."""
    return -(-low // stride) * stride, min(high - 1, last) // stride * stride


def square_sums(maps: torch.Tensor, window: int = 20, stride: int = 20, size: tuple[int, int] | None = None,
                origin: tuple[int, int] = (0, 0), owned: tuple[int, int, int, int] | None = None) -> SquareSums:
    """:class:`SquareSums` of ``(B, P, h, w)`` maps over ``window`` x
    ``window`` windows (stride ``stride``; each side clipped to the map when
    it is smaller).

    For a region of a larger map: ``size`` is the whole map's (H, W),
    ``origin`` the region's top-left pixel in it and ``owned`` the (top,
    bottom, left, right) rectangle, in whole-map pixels, whose pixels and
    windows (by their top-left corner) this region counts. The region must
    hold exact values over ``owned`` and over every owned window."""
    batch, n_parts, h, w = maps.shape
    height, width = size or (h, w)
    wh, ww = min(window, height), min(window, width)
    r0, c0 = origin
    top, bottom, left, right = owned or (r0, r0 + h, c0, c0 + w)
    squared = maps.double().pow(2)
    total = squared[:, :, top - r0:bottom - r0, left - c0:right - c0].sum((2, 3))
    first_row, last_row = _window_starts(top, bottom, height - wh, stride)
    first_col, last_col = _window_starts(left, right, width - ww, stride)
    if first_row > last_row or first_col > last_col:
        window_max = torch.full((batch, n_parts), -math.inf, dtype=torch.float64, device=maps.device)
    else:
        span = squared[:, :, first_row - r0:last_row + wh - r0, first_col - c0:last_col + ww - c0]
        means = F.avg_pool2d(span.reshape(batch * n_parts, 1, *span.shape[-2:]), (wh, ww), stride=stride)
        window_max = means.reshape(batch, n_parts, -1).amax(2)
    return SquareSums(window_max, total, height * width, wh * ww)


def rms_features(sums: SquareSums, norm: str = "rms") -> torch.Tensor:
    """The paper's two features of a one-part map from its sums: ``(B, 2)``
    global and largest window L2 norm (``"sum"``) or RMS (``"rms"``)."""
    global_mean, window_mean = sums.total[:, 0] / sums.pixels, sums.window_max[:, 0]
    if norm == "sum":
        global_mean, window_mean = global_mean * sums.pixels, window_mean * sums.window_pixels
    elif norm != "rms":
        raise ValueError(f"norm must be 'rms' or 'sum', got {norm!r}")
    return torch.stack([global_mean.sqrt(), window_mean.sqrt()], dim=1)


def window_max_features(sums: SquareSums) -> torch.Tensor:
    """``(B, P)``: each part's largest window RMS, from its sums."""
    return sums.window_max.sqrt()


def image_features(response: torch.Tensor, window: int = 20, stride: int = 20,
                   norm: str = "rms") -> torch.Tensor:
    """``(B, H, W)`` response maps -> ``(B, 2)`` features: the norm of the
    whole map and the largest norm over ``window`` x ``window`` windows
    (stride ``stride``; clipped to the image when it is smaller), RMS or L2
    as ``norm`` says (:func:`rms_features`)."""
    return rms_features(square_sums(response.unsqueeze(1), window, stride), norm)


def window_means(squared: torch.Tensor, window: int, stride: int) -> torch.Tensor:
    """``(B, 1, H, W)`` -> ``(B, n_windows)`` means over ``window`` x
    ``window`` windows, each side clipped to the image when it is smaller."""
    height, width = squared.shape[-2:]
    return F.avg_pool2d(squared, (min(window, height), min(window, width)), stride=stride).flatten(1)


MAP_SCORES = ("max", "robust_max")


def map_score_name(rule: str, window: int) -> str:
    """The feature name of a map statistic, e.g. ``robust_max_mean_11px``."""
    return f"{rule}_mean_{window}px"


def map_scores(anomaly_map: torch.Tensor, rule: str, window: int) -> torch.Tensor:
    """``(B, H, W)`` anomaly maps -> ``(B, 1)`` float64 image scores.

    ``"max"``: the largest mean of the map over ``window`` x ``window``
    squares (stride 1; each side clipped to the image), so one hot pixel
    counts less than a defect-sized patch of them. ``"robust_max"``: the same
    on the map standardised by its own median and median absolute deviation,
    so that a surface whose whole map runs high (its finish, its lighting)
    does not outscore a local defect on a quiet one."""
    if rule not in MAP_SCORES:
        raise ValueError(f"rule must be one of {', '.join(MAP_SCORES)}, got {rule!r}")
    maps = anomaly_map.double()
    if rule == "robust_max":
        flat = maps.flatten(1)
        median = flat.median(1).values
        spread = (flat - median[:, None]).abs().median(1).values.clamp_min(1e-9)
        maps = (maps - median[:, None, None]) / spread[:, None, None]
    height, width = int(maps.shape[-2]), int(maps.shape[-1])
    means = F.avg_pool2d(maps[:, None], (min(window, height), min(window, width)), stride=1)
    return means.flatten(1).amax(1, keepdim=True)
