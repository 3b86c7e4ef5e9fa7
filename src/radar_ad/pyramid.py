"""The image pyramid the single step runs on, and the way back to the finest level.

Level ``s`` of an ``(H, W)`` image is the image area-averaged to
``(round(H / s), round(W / s))`` (scale 1 is the image itself): the same
patch then covers ``s`` times more of the surface, so one network evaluation
per patch sees fine structure at the first level and the layout of the part
at the coarsest. A level smaller than a patch is mirrored at its bottom and
right edges up to the patch size (never an error); the maps of the mirrored
pixels are cut off again. Each level's maps come back to the finest
resolution by bilinear interpolation, for a whole map (:func:`upsample`) or,
with the same numbers, for one region of it (:func:`upsample_region`, what
lets a large image's response be computed in tiles).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def level_size(height: int, width: int, scale: int) -> tuple[int, int]:
    """``(h, w)`` of level ``scale`` of an ``(height, width)`` image."""
    return max(1, round(height / scale)), max(1, round(width / scale))


def downsample(images: torch.Tensor, scale: int) -> torch.Tensor:
    """``(..., C, H, W)`` -> level ``scale``: each pixel the mean of the
    pixels it covers (an area average, which does not alias fine texture)."""
    if scale == 1:
        return images
    size = level_size(int(images.shape[-2]), int(images.shape[-1]), scale)
    flat = images.reshape(-1, *images.shape[-3:])
    return F.adaptive_avg_pool2d(flat, size).reshape(*images.shape[:-2], *size)


def mirror_indices(length: int, total: int) -> torch.Tensor:
    """``total`` indices into ``range(length)`` that run 0, 1, ..., length - 1,
    then back and forth (``length - 1, length - 2, ...``): mirroring without
    the limit of a pad narrower than the input."""
    position = torch.arange(total) % (2 * length)
    return torch.where(position < length, position, 2 * length - 1 - position)


def pad_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """``(..., H, W)`` mirrored at the bottom and right up to at least
    ``size`` on each side (unchanged when already that large)."""
    height, width = int(images.shape[-2]), int(images.shape[-1])
    if height < size:
        images = images[..., mirror_indices(height, size).to(images.device), :]
    if width < size:
        images = images[..., mirror_indices(width, size).to(images.device)]
    return images


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, K, h, w)`` -> ``(B, K, H, W)``, bilinear with half-pixel centres."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)


def _axis(source: int, target: int, start: int, stop: int,
          device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights of output pixels ``start..stop`` along an
    axis of ``source`` -> ``target`` pixels, as ``F.interpolate`` computes them."""
    position = ((torch.arange(start, stop, device=device, dtype=torch.float64) + 0.5) * (source / target)
                - 0.5).clamp_min(0)
    low = position.floor().long().clamp_max(source - 1)
    high = (low + 1).clamp_max(source - 1)
    return low, high, (position - low).float()


def upsample_region(maps: torch.Tensor, size: tuple[int, int], rows: tuple[int, int],
                    cols: tuple[int, int]) -> torch.Tensor:
    """``upsample(maps, size)[..., r0:r1, c0:c1]`` without the whole
    ``(H, W)`` map: ``(B, K, r1 - r0, c1 - c0)``."""
    height, width = int(maps.shape[-2]), int(maps.shape[-1])
    if (height, width) == tuple(size):
        return maps[..., rows[0]:rows[1], cols[0]:cols[1]]
    if (rows, cols) == ((0, size[0]), (0, size[1])):
        return upsample(maps, size)
    top, bottom, wy = _axis(height, size[0], *rows, maps.device)
    left, right, wx = _axis(width, size[1], *cols, maps.device)
    wy, wx = wy.to(maps.dtype)[:, None], wx.to(maps.dtype)
    upper = maps[..., top, :]
    lower = maps[..., bottom, :]
    rows_done = upper + (lower - upper) * wy
    return rows_done[..., left] + (rows_done[..., right] - rows_done[..., left]) * wx
