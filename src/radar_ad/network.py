"""The noise-prediction U-Net and the DDPM noise schedule, built from config.

Both come from diffusers, so the network is the field's standard
``UNet2DModel`` (sinusoidal timestep embedding, attention blocks) and the
schedule is ``DDPMScheduler``'s, not a re-derivation of ours.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler, UNet2DModel

from .config import NetworkConfig


def build_unet(config: NetworkConfig, channels: int, patch_size: int) -> UNet2DModel:
    """A ``UNet2DModel`` for ``channels``-channel patches of ``patch_size``.

    Level i uses attention where ``config.attention[i]`` is true; the
    up-path mirrors the down-path.
    """
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in config.attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.attention))
    return UNet2DModel(
        sample_size=patch_size,
        in_channels=channels,
        out_channels=channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=config.norm_num_groups,
        add_attention=any(config.attention),
    )


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
