"""The noise-prediction U-Net and the DDPM noise schedule, built from config.

Both come from diffusers, so the network is the field's standard
``UNet2DModel`` (sinusoidal timestep embedding, attention blocks) and the
schedule is ``DDPMScheduler``'s, not a re-derivation of ours.

One network serves every level of the image pyramid (``network.scales``):
the level is its class label (``UNet2DModel``'s class embedding, added to
the timestep embedding), so the same weights know whether a patch shows
fine structure or the coarse layout of a part. With ``network.repair`` it
has a second output per image channel, the repair: trained on synthetic
defects to point from the input back to the normal patch
(:mod:`radar_ad.training`).
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler, UNet2DModel

from .config import NetworkConfig


def build_unet(config: NetworkConfig, channels: int, patch_size: int) -> UNet2DModel:
    """A ``UNet2DModel`` for ``channels``-channel patches of ``patch_size``,
    one class label per pyramid level, ``2 * channels`` outputs with a repair.

    Level i uses attention where ``config.attention[i]`` is true; the
    up-path mirrors the down-path.
    """
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in config.attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.attention))
    return UNet2DModel(
        sample_size=patch_size,
        in_channels=channels,
        out_channels=output_channels(config, channels),
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=config.norm_num_groups,
        add_attention=any(config.attention),
        num_class_embeds=len(config.scales),
    )


def output_channels(config: NetworkConfig, channels: int) -> int:
    """The U-Net's outputs: the predicted noise, then (with a repair) the repair."""
    return 2 * channels if config.repair else channels


def predict_noise(unet: UNet2DModel, noisy: torch.Tensor, timestep: torch.Tensor | int,
                  level: int | torch.Tensor = 0) -> torch.Tensor:
    """eps_theta(x_t, t) of ``(N, C, p, p)`` patches of pyramid level
    ``level`` (an index into ``network.scales``; a tensor gives one per
    patch): the noise part of the output, ``(N, C, p, p)``."""
    channels = int(noisy.shape[1])
    timestep = torch.as_tensor(timestep, dtype=torch.long, device=noisy.device)
    labels = torch.as_tensor(level, dtype=torch.long, device=noisy.device).expand(noisy.shape[0])
    return unet(noisy, timestep, class_labels=labels).sample[:, :channels]


def build_scheduler(config: NetworkConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
    )


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when present (or what the user asked for), else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
