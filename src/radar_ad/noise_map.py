"""One forward noising step and one network evaluation per patch and level -> the one-step evidence.

This is the whole of RADAR's use of the diffusion model: no reverse chain, no
reconstruction. Each level of the image pyramid (:mod:`radar_ad.pyramid`) is
tiled into patches, each patch is noised to timestep ``t`` with seeded
noise, and the U-Net's output is stitched into full-size maps of that
level: the predicted noise and the one-step repair x0_hat - x (the network's
estimate of the clean patch from the same evaluation, less the patch).

:class:`OneStepNoise` is the per-patch part (noising + prediction + repair)
as one torch module; it is what ``radar export`` writes to ONNX, so the
exported graph and the Python path compute the same function.
:func:`noise_map` does the tiling and stitching around any such patch
predictor; :func:`one_step_evidence` runs it on every level and returns an
:class:`Evidence`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from diffusers import UNet2DModel

from .patches import grid_positions
from .pyramid import downsample, level_size, pad_to

# Seeded noise is drawn once per model for this many patch positions; the
# patch at grid position i of an image gets draw ``i % NOISE_BANK_SIZE``, so
# every image, batch, device and backend sees the same noise.
NOISE_BANK_SIZE = 1024
_DRAW_SEED_STEP = 7919

PatchPredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(patches (N, C, p, p) in [0, 1], grid index (N,) int64) -> maps (N, K, p, p)``"""

LevelPredictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(patches (N, C, p, p), grid index (N,), level (N,) int64) -> (N, 2C, p, p)``:
the predicted noise, then the repair (a backend's ``__call__``)."""


def noise_bank(seed: int, draws: int, channels: int, patch_size: int,
               size: int = NOISE_BANK_SIZE) -> torch.Tensor:
    """``(draws, size, C, p, p)`` standard normal noise from CPU generators
    seeded with ``seed`` (and ``seed + 7919 k`` for draw k)."""
    generator = torch.Generator()
    banks = []
    for draw in range(draws):
        generator.manual_seed(seed + _DRAW_SEED_STEP * draw)
        banks.append(torch.randn((size, channels, patch_size, patch_size), generator=generator))
    return torch.stack(banks)


class OneStepNoise(torch.nn.Module):
    """For clean patches x of pyramid level ``level``: the predicted noise
    eps_theta(x_t, t, level) of x_t = sqrt(abar) x + sqrt(1 - abar) noise,
    and the repair x0_hat - x, where x0_hat = (x_t - sqrt(1 - abar) eps_theta)
    / sqrt(abar) plus the network's repair output when it has one; both
    averaged over the noise draws, in the network's [-1, 1] units.

    Inputs are what a camera pipeline has: patches in [0, 1], their grid
    position (which selects the seeded noise) and their level. Keeping the
    scaling, the noising and the timestep inside the module keeps them
    inside the export.
    """

    def __init__(self, unet: UNet2DModel, timestep: int, abar: float, bank: torch.Tensor) -> None:
        super().__init__()
        self.unet = unet
        self.timestep = int(timestep)
        self.abar = float(abar)
        self.bank: torch.Tensor
        self.register_buffer("bank", bank, persistent=False)

    def forward(self, patches: torch.Tensor, index: torch.Tensor,
                level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        draws, size = self.bank.shape[:2]
        channels = patches.shape[1]
        noise = self.bank[:, index % size]  # (D, N, C, p, p)
        noisy = self.abar**0.5 * (patches * 2 - 1) + (1 - self.abar) ** 0.5 * noise
        noisy = noisy.reshape(-1, *patches.shape[1:])
        t = torch.tensor(self.timestep, dtype=torch.long, device=patches.device)
        output = self.unet(noisy, t, class_labels=level.repeat(draws)).sample
        eps = output[:, :channels]
        # x0_hat - x from the same evaluation: the noise the network did not explain, scaled back
        repair = ((1 - self.abar) / self.abar) ** 0.5 * (noise.reshape(eps.shape) - eps)
        if output.shape[1] > channels:
            repair = repair + output[:, channels:]
        return (eps.reshape(draws, -1, *patches.shape[1:]).mean(0),
                repair.reshape(draws, -1, *patches.shape[1:]).mean(0))


def one_step_noise(unet: UNet2DModel, *, timestep: int, alphas_cumprod: torch.Tensor, seed: int,
                   draws: int, channels: int, patch_size: int) -> OneStepNoise:
    """The model's :class:`OneStepNoise`, on the U-Net's device, in eval mode."""
    device = next(unet.parameters()).device
    bank = noise_bank(seed, draws, channels, patch_size).to(device)
    return OneStepNoise(unet, timestep, float(alphas_cumprod[timestep]), bank).eval()


def border_weights(patch_size: int, margin: int) -> torch.Tensor:
    """``(p, p)`` stitching weights: 1 inside, 1e-3 in the outer ``margin``
    ring, where the U-Net's zero padding makes predictions unreliable; a pixel
    seen only by patch borders still gets a value."""
    weights = torch.full((patch_size, patch_size), 1e-3)
    weights[margin:patch_size - margin, margin:patch_size - margin] = 1.0
    return weights


@torch.inference_mode()
def noise_map(predict: PatchPredictor, images: torch.Tensor | Sequence[torch.Tensor], *, patch_size: int,
              stride: int, batch_size: int = 256, device: torch.device | str = "cpu") -> torch.Tensor:
    """Stitched ``(B, K, H, W)`` maps of what ``predict`` gives per patch,
    for same-size images in [0, 1]: a ``(B, C, H, W)`` tensor or a sequence
    of ``(C, H, W)`` tensors (not copied into one stack).

    Patches go to ``predict`` ``batch_size`` at a time on ``device``. Patch
    borders (a margin of patch_size // 7 pixels) are down-weighted when
    stitching, so the seams between patches do not show up as structure in
    the map. (Reflect-padding the image instead would mirror the texture into
    a pattern the model never saw, e.g. 45 degree lines into chevrons.)

    Streamed: each batch of patches is cut from the images, predicted and
    added into the weighted sums at once, so memory is the map itself (its
    sums, float32) plus one batch, never every patch of the image. The
    batches, the noise each patch gets and the order of the sums are those of
    cutting every patch first (:func:`~radar_ad.patches.tile`, then
    :func:`~radar_ad.patches.stitch`).
    """
    batch = len(images)
    height, width = (int(n) for n in images[0].shape[-2:])
    rows = grid_positions(height, patch_size, stride)
    cols = grid_positions(width, patch_size, stride)
    per_image = len(rows) * len(cols)
    offsets = torch.arange(patch_size)
    weights = border_weights(patch_size, patch_size // 7)
    total: torch.Tensor | None = None
    count = torch.zeros(height * width, dtype=images[0].dtype)
    for start in range(0, batch * per_image, batch_size):
        which = torch.arange(start, min(start + batch_size, batch * per_image))
        image_of, index = which // per_image, which % per_image
        top = (rows[index // len(cols)][:, None] + offsets)[:, :, None]  # (n, p, 1)
        left = (cols[index % len(cols)][:, None] + offsets)[:, None, :]  # (n, 1, p)
        owned = [(b, image_of == b) for b in image_of.unique().tolist()]
        patches = torch.cat([images[b][:, top[mine].to(images[b].device), left[mine].to(images[b].device)]
                             for b, mine in owned], dim=1)  # (C, n, p, p), image-major
        predicted = predict(patches.transpose(0, 1).contiguous().to(device), index.to(device))
        channels = int(predicted.shape[1])
        if total is None:
            total = torch.zeros(batch, channels, height * width, dtype=images[0].dtype, device=device)
        predicted = predicted.to(total.dtype) * weights.to(total)
        flat = top * width + left  # (n, p, p): where each patch pixel goes
        for b, mine in owned:
            total[b].index_add_(1, flat[mine].reshape(-1).to(device),
                                predicted[mine.to(device)].transpose(0, 1).reshape(channels, -1))
            if b == 0:  # the weights' sums are the same for every image
                count.index_add_(0, flat[mine].reshape(-1), weights.expand(int(mine.sum()), -1, -1).reshape(-1))
    assert total is not None  # every image has at least one patch
    return total.div_(count.to(device)).reshape(batch, -1, height, width)


@dataclass
class Evidence:
    """The one-step evidence of ``B`` same-size images: ``image`` ``(B, C,
    H, W)`` in [0, 1] and, for each level of ``scales`` (downsampling
    factors, finest first), ``noise[k]`` and ``repair[k]`` ``(B, C, h_k,
    w_k)``: the predicted noise and the repair x0_hat - x at that level's
    own resolution."""

    image: torch.Tensor
    scales: tuple[int, ...]
    noise: list[torch.Tensor]
    repair: list[torch.Tensor]

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the finest level (the image)."""
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def level(self, scale: int) -> int:
        """The position of ``scale`` in :attr:`scales` (``ValueError`` when absent)."""
        if scale not in self.scales:
            raise ValueError(f"no evidence at scale {scale} (levels: {list(self.scales)})")
        return self.scales.index(scale)

    def select(self, scales: Sequence[int]) -> Evidence:
        """The evidence of these levels only."""
        keep = [self.level(scale) for scale in scales]
        return Evidence(self.image, tuple(scales), [self.noise[k] for k in keep], [self.repair[k] for k in keep])

    def items(self, indices: Sequence[int]) -> Evidence:
        """The evidence of images ``indices`` of the batch."""
        pick = torch.as_tensor(list(indices), dtype=torch.long)
        return Evidence(self.image[pick.to(self.image.device)], self.scales,
                        [n[pick.to(n.device)] for n in self.noise], [r[pick.to(r.device)] for r in self.repair])

    def to(self, device: torch.device | str) -> Evidence:
        return Evidence(self.image.to(device), self.scales, [n.to(device) for n in self.noise],
                        [r.to(device) for r in self.repair])


def one_step_evidence(predict: LevelPredictor, images: Sequence[torch.Tensor], scales: Sequence[int],
                      levels: Sequence[int], *, patch_size: int, stride: int, batch_size: int = 256,
                      device: torch.device | str = "cpu") -> Evidence:
    """:class:`Evidence` of same-size ``(C, H, W)`` images in [0, 1] at each
    of ``scales``, whose class labels in the network are ``levels``.

    A level smaller than a patch is mirrored up to the patch size
    (:func:`~radar_ad.pyramid.pad_to`) and its maps cut back to the level's
    size, so any image the finest level can tile has every level."""
    first = images[0]
    channels, height, width = (int(n) for n in first.shape[-3:])
    noise, repair = [], []
    for scale, level in zip(scales, levels):
        rows, cols = level_size(height, width, scale)
        pyramid_level = [pad_to(downsample(image, scale), patch_size) for image in images]

        def predict_level(patches: torch.Tensor, index: torch.Tensor, level: int = level) -> torch.Tensor:
            return predict(patches, index, torch.full_like(index, level))

        maps = noise_map(predict_level, pyramid_level, patch_size=patch_size, stride=stride,
                         batch_size=batch_size, device=device)[..., :rows, :cols]
        noise.append(maps[:, :channels])
        repair.append(maps[:, channels:])
    image = torch.stack([torch.as_tensor(image) for image in images]).to(device)
    return Evidence(image, tuple(scales), noise, repair)
