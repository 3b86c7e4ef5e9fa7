"""Random patch sampling for training; tiling and stitching for inference.

Training draws patches uniformly from the paper's stride-1 patch set without
materialising it (a 255 px image alone has 51,984 of them), on every level
of the image pyramid (:class:`PyramidSampler`). Inference tiles
an image on a strided grid that always includes the last row and column of
positions, so any image size is covered, and stitches by averaging overlaps.
All of it is index arithmetic on tensors: no Python loop over patches.
"""

from __future__ import annotations

import torch

from .pyramid import downsample, pad_to


def grid_positions(length: int, patch: int, stride: int) -> torch.Tensor:
    """Top-left offsets along one axis: 0, stride, 2*stride, ... plus the last
    offset ``length - patch`` so the far edge is always covered."""
    if length < patch:
        raise ValueError(f"length {length} is smaller than the patch size {patch}")
    positions = torch.arange(0, length - patch + 1, stride)
    if positions[-1] != length - patch:
        positions = torch.cat([positions, torch.tensor([length - patch])])
    return positions


def _grid_index(height: int, width: int, patch: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column index tensors of shape (Ny, Nx, p, p) for every tile."""
    offsets = torch.arange(patch)
    rows = grid_positions(height, patch, stride)[:, None] + offsets  # (Ny, p)
    cols = grid_positions(width, patch, stride)[:, None] + offsets  # (Nx, p)
    rows = rows[:, None, :, None].expand(-1, cols.shape[0], -1, patch)
    cols = cols[None, :, None, :].expand(rows.shape[0], -1, patch, -1)
    return rows, cols


def tile(images: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """Cut ``(B, C, H, W)`` images into ``(B * N, C, p, p)`` patches on the
    strided grid (N patches per image, image-major order)."""
    batch, channels, height, width = images.shape
    rows, cols = _grid_index(height, width, patch, stride)
    rows, cols = rows.to(images.device), cols.to(images.device)
    patches = images[:, :, rows, cols]  # (B, C, Ny, Nx, p, p)
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, channels, patch, patch)


def stitch(patches: torch.Tensor, height: int, width: int, stride: int,
           weights: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of :func:`tile`: ``(B * N, C, p, p)`` -> ``(B, C, H, W)``,
    averaging the pixels that several patches cover, weighted per patch pixel
    by ``weights`` ``(p, p)`` when given (uniform otherwise)."""
    patch, channels = patches.shape[-1], patches.shape[1]
    rows, cols = _grid_index(height, width, patch, stride)
    n_tiles = rows.shape[0] * rows.shape[1]
    batch = patches.shape[0] // n_tiles
    flat = (rows * width + cols).reshape(-1).to(patches.device)  # (N * p * p,)
    if weights is None:
        weights = torch.ones(patch, patch)
    weights = weights.to(patches).expand(n_tiles, patch, patch).reshape(-1)
    values = patches.reshape(batch, n_tiles, channels, patch, patch)
    values = values.permute(0, 2, 1, 3, 4).reshape(batch, channels, -1) * weights
    total = torch.zeros(batch, channels, height * width, dtype=patches.dtype, device=patches.device)
    total.index_add_(2, flat, values)
    count = torch.zeros(height * width, dtype=patches.dtype, device=patches.device)
    count.index_add_(0, flat, weights)
    return (total / count).reshape(batch, channels, height, width)


class PatchSampler:
    """Uniform draws from the stride-1 patch set of a list of images.

    The images are kept as uint8, each at its own size, in one flat buffer
    (no padding: a folder of mixed aspect ratios costs its own pixels, not
    images x the largest height x the largest width); each draw first picks
    an image with probability proportional to its number of valid patch
    positions (so every patch of the whole set is equally likely), then a
    position inside it.
    """

    def __init__(self, images: list[torch.Tensor], patch: int) -> None:
        """``images``: float tensors ``(C, H, W)`` in [0, 1], each at least
        ``patch`` on both sides."""
        if not images:
            raise ValueError("no images to sample patches from")
        self.channels = int(images[0].shape[0])
        self.patch = patch
        self.buffer = torch.cat([(image * 255).round().clamp(0, 255).to(torch.uint8).reshape(-1)
                                 for image in images])
        self.sizes = torch.tensor([(image.shape[1], image.shape[2]) for image in images], dtype=torch.long)
        pixels = self.sizes[:, 0] * self.sizes[:, 1]
        self.starts = torch.cumsum(pixels * self.channels, 0) - pixels * self.channels  # each image's offset
        self.ranges = self.sizes - patch + 1  # valid positions per axis
        self.weights = (self.ranges[:, 0] * self.ranges[:, 1]).double()

    @property
    def n_patches(self) -> int:
        """Size of the stride-1 patch set (the paper's training set)."""
        return int(self.weights.sum().item())

    def sample(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` random patches, float ``(count, C, p, p)`` in [0, 1]."""
        which = torch.multinomial(self.weights, count, replacement=True, generator=generator)
        uniform = torch.rand(count, 2, generator=generator, dtype=torch.float64)
        start = (uniform * self.ranges[which]).long()  # (count, 2)
        offsets = torch.arange(self.patch)
        height, width = self.sizes[which, 0], self.sizes[which, 1]
        rows = (start[:, 0, None] + offsets)[:, None, :, None]  # (count, 1, p, 1)
        cols = (start[:, 1, None] + offsets)[:, None, None, :]  # (count, 1, 1, p)
        channel = torch.arange(self.channels)[None, :, None, None]  # (1, C, 1, 1)
        base = self.starts[which][:, None, None, None]
        plane = (height * width)[:, None, None, None]
        index = base + channel * plane + rows * width[:, None, None, None] + cols  # (count, C, p, p)
        return self.buffer[index].float() / 255.0


class PyramidSampler:
    """Patches of every pyramid level of a list of images, with their level.

    Level ``k`` holds each image downsampled by ``scales[k]``
    (:func:`~radar_ad.pyramid.downsample`; mirrored up to the patch size
    where smaller, as inference does); each draw picks the level uniformly,
    then a patch uniformly from that level's stride-1 patch set
    (:class:`PatchSampler`), so the coarse levels are seen as often as the
    finest although they hold far fewer patches.
    """

    def __init__(self, images: list[torch.Tensor], patch: int, scales: tuple[int, ...]) -> None:
        if not images:
            raise ValueError("no images to sample patches from")
        self.scales = tuple(scales)
        self.levels = [PatchSampler([pad_to(downsample(image, scale), patch) for image in images], patch)
                       for scale in self.scales]
        self.channels = self.levels[0].channels
        self.patch = patch

    @property
    def n_patches(self) -> int:
        """Size of the stride-1 patch set of every level together."""
        return sum(level.n_patches for level in self.levels)

    def sample(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(patches (count, C, p, p) float in [0, 1], levels (count,) int64)``."""
        levels = torch.randint(len(self.levels), (count,), generator=generator)
        patches = torch.empty(count, self.channels, self.patch, self.patch)
        for k, sampler in enumerate(self.levels):
            chosen = levels == k
            if chosen.any():
                patches[chosen] = sampler.sample(int(chosen.sum()), generator)
        return patches, levels
