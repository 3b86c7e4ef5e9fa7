"""One forward noising step and one network evaluation -> predicted-noise map.

This is the whole of RADAR's use of the diffusion model: no reverse chain, no
reconstruction. The image is tiled into patches, each patch is noised to
timestep ``t`` with seeded noise, and the U-Net's noise prediction is stitched
into a full-size map.

:class:`OneStepNoise` is the per-patch part (noising + prediction) as one
torch module; it is what ``radar export`` writes to ONNX, so the exported
graph and the Python path compute the same function. :func:`noise_map` does
the tiling and stitching around any such patch predictor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers import UNet2DModel

from .patches import grid_positions

# Seeded noise is drawn once per model for this many patch positions; the
# patch at grid position i of an image gets draw ``i % NOISE_BANK_SIZE``, so
# every image, batch, device and backend sees the same noise.
NOISE_BANK_SIZE = 1024
_DRAW_SEED_STEP = 7919

PatchPredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(patches (N, C, p, p) in [0, 1], grid index (N,) int64) -> noise (N, C, p, p)``"""


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
    """eps_theta(sqrt(abar) x + sqrt(1 - abar) noise, t), averaged over the
    noise draws, for clean patches x.

    Inputs are what a camera pipeline has: patches in [0, 1] and their grid
    position (which selects the seeded noise). Keeping the scaling, the
    noising and the timestep inside the module keeps them inside the export.
    """

    def __init__(self, unet: UNet2DModel, timestep: int, abar: float, bank: torch.Tensor) -> None:
        super().__init__()
        self.unet = unet
        self.timestep = int(timestep)
        self.abar = float(abar)
        self.bank: torch.Tensor
        self.register_buffer("bank", bank, persistent=False)

    def forward(self, patches: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        draws, size = self.bank.shape[:2]
        noise = self.bank[:, index % size]  # (D, N, C, p, p)
        noisy = self.abar**0.5 * (patches * 2 - 1) + (1 - self.abar) ** 0.5 * noise
        noisy = noisy.reshape(-1, *patches.shape[1:])
        t = torch.tensor(self.timestep, dtype=torch.long, device=patches.device)
        eps = self.unet(noisy, t).sample
        return eps.reshape(draws, -1, *patches.shape[1:]).mean(0)


class NoiseAndActivations(torch.nn.Module):
    """:class:`OneStepNoise` that also returns the outputs of named U-Net
    modules (``"mid_block"``, ``"down_blocks.1"`` ...; a module that returns
    a tuple gives its first element), averaged over the noise draws like the
    noise. What the torch backend runs when activations are asked for, and
    what an export with activations traces, so both compute one function."""

    def __init__(self, noise: OneStepNoise, layers: tuple[str, ...]) -> None:
        super().__init__()
        self.noise = noise
        self.layers = tuple(layers)
        for layer in self.layers:
            noise.unet.get_submodule(layer)  # AttributeError names an unknown layer

    def forward(self, patches: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        captured: dict[str, torch.Tensor] = {}

        def keeper(layer: str) -> Callable[..., None]:
            def keep(module: torch.nn.Module, args: Any, output: Any) -> None:
                captured[layer] = output[0] if isinstance(output, (tuple, list)) else output
            return keep

        handles = [self.noise.unet.get_submodule(layer).register_forward_hook(keeper(layer))
                   for layer in self.layers]
        try:
            eps = self.noise(patches, index)
        finally:
            for handle in handles:
                handle.remove()
        draws = int(self.noise.bank.shape[0])
        return (eps, *(captured[layer].reshape(draws, -1, *captured[layer].shape[1:]).mean(0)
                       for layer in self.layers))


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
    """Predicted-noise map ``(B, C, H, W)`` of same-size images in [0, 1]:
    a ``(B, C, H, W)`` tensor or a sequence of ``(C, H, W)`` tensors (not
    copied into one stack).

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
    channels, height, width = (int(n) for n in images[0].shape[-3:])
    rows = grid_positions(height, patch_size, stride)
    cols = grid_positions(width, patch_size, stride)
    per_image = len(rows) * len(cols)
    offsets = torch.arange(patch_size)
    weights = border_weights(patch_size, patch_size // 7)
    total = torch.zeros(batch, channels, height * width, dtype=images[0].dtype, device=device)
    count = torch.zeros(height * width, dtype=images[0].dtype)
    for start in range(0, batch * per_image, batch_size):
        which = torch.arange(start, min(start + batch_size, batch * per_image))
        image_of, index = which // per_image, which % per_image
        top = (rows[index // len(cols)][:, None] + offsets)[:, :, None]  # (n, p, 1)
        left = (cols[index % len(cols)][:, None] + offsets)[:, None, :]  # (n, 1, p)
        owned = [(b, image_of == b) for b in image_of.unique().tolist()]
        patches = torch.cat([images[b][:, top[mine].to(images[b].device), left[mine].to(images[b].device)]
                             for b, mine in owned], dim=1)  # (C, n, p, p), image-major
        noise = predict(patches.transpose(0, 1).contiguous().to(device), index.to(device))
        noise = noise.to(total.dtype) * weights.to(total)
        flat = top * width + left  # (n, p, p): where each patch pixel goes
        for b, mine in owned:
            total[b].index_add_(1, flat[mine].reshape(-1).to(device),
                                noise[mine.to(device)].transpose(0, 1).reshape(channels, -1))
            if b == 0:  # the weights' sums are the same for every image
                count.index_add_(0, flat[mine].reshape(-1), weights.expand(int(mine.sum()), -1, -1).reshape(-1))
    return total.div_(count.to(device)).reshape(batch, channels, height, width)
