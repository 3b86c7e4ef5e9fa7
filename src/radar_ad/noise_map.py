"""One forward noising step and one network evaluation -> predicted-noise map.

This is the whole of RADAR's use of the diffusion model: no reverse chain, no
reconstruction. The image is tiled into patches (overlaps averaged when
stitched back), each patch is noised to timestep ``t`` with seeded noise, and
the U-Net's noise prediction is stitched into a full-size map.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DModel

from .patches import stitch, tile


@torch.no_grad()
def predict_noise(unet: UNet2DModel, patches: torch.Tensor, timestep: int, abar: float,
                  noise: torch.Tensor, batch_size: int) -> torch.Tensor:
    """eps_theta(sqrt(abar) x + sqrt(1 - abar) noise, t) for ``(N, C, p, p)``
    patches in [-1, 1], evaluated ``batch_size`` patches at a time."""
    noisy = abar**0.5 * patches + (1 - abar) ** 0.5 * noise
    out = torch.empty_like(noisy)
    for start in range(0, noisy.shape[0], batch_size):
        chunk = noisy[start:start + batch_size]
        t = torch.full((chunk.shape[0],), timestep, device=chunk.device, dtype=torch.long)
        out[start:start + batch_size] = unet(chunk, t).sample
    return out


def border_weights(patch_size: int, margin: int) -> torch.Tensor:
    """``(p, p)`` stitching weights: 1 inside, 1e-3 in the outer ``margin``
    ring, where the U-Net's zero padding makes predictions unreliable; a pixel
    seen only by patch borders still gets a value."""
    weights = torch.full((patch_size, patch_size), 1e-3)
    weights[margin:patch_size - margin, margin:patch_size - margin] = 1.0
    return weights


@torch.no_grad()
def noise_map(unet: UNet2DModel, images: torch.Tensor, *, patch_size: int, stride: int,
              timestep: int, alphas_cumprod: torch.Tensor, seed: int, draws: int = 1,
              batch_size: int = 256) -> torch.Tensor:
    """Predicted-noise map ``(B, C, H, W)`` of same-size images ``(B, C, H, W)``
    in [0, 1].

    Patch borders (a margin of patch_size // 7 pixels) are down-weighted when
    stitching, so the seams between patches do not show up as structure in
    the map. (Reflect-padding the image instead would mirror the texture into
    a pattern the model never saw, e.g. 45 degree lines into chevrons.) The noise
    is drawn on the CPU from a generator seeded with ``seed``, the same for
    every image, so an image gets the same map whatever batch it is in and on
    whatever device;
    ``draws`` > 1 averages the maps of that many draws.
    """
    device = next(unet.parameters()).device
    batch, channels, height, width = images.shape
    margin = patch_size // 7
    patches = tile(images.to(device) * 2 - 1, patch_size, stride)  # (B * N, C, p, p)
    per_image = patches.shape[0] // batch
    abar = float(alphas_cumprod[timestep])
    generator = torch.Generator()
    total = torch.zeros_like(patches)
    for draw in range(draws):
        generator.manual_seed(seed + 7919 * draw)
        noise = torch.randn((per_image, channels, patch_size, patch_size), generator=generator)
        total += predict_noise(unet, patches, timestep, abar,
                               noise.repeat(batch, 1, 1, 1).to(device), batch_size)
    return stitch(total / draws, height, width, stride, border_weights(patch_size, margin))
