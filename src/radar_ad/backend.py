"""Inference backends: the engine that runs the per-patch part of the method
(one forward noising step + one U-Net evaluation) on a batch of patches of
one or more pyramid levels.

Every backend implements :class:`NoiseBackend` and is registered in
:data:`~radar_ad.registry.BACKENDS`. The PyTorch backend (:class:`TorchBackend`)
lives here, in the core; the others are plug-ins in ``radar_ad/backends/``
(ONNX Runtime, OpenVINO), built from a fitted PyTorch network or opened
from an exported model file. ``Radar`` only ever talks to this interface.
"""

from __future__ import annotations

import math
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import UNet2DModel

from .config import RadarConfig
from .errors import ConfigError, ModelError
from .network import build_scheduler
from .noise_map import OneStepNoise, one_step_noise
from .persistence import Conformal
from .registry import BACKENDS

# The settings the per-patch function is built with: a backend that runs a
# fixed graph cannot follow a change of them.
NOISE_SETTINGS = ("seed", "inference.timestep", "inference.draws", "inference.precision")

_process_threads: int | None = None


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The CPUs a cgroup CPU quota allows this process (a container's
    ``--cpus``), rounded up; ``None`` where no quota is set. Reads cgroup v2
    (``cpu.max``: ``QUOTA PERIOD`` or ``max PERIOD``) or v1
    (``cpu/cpu.cfs_quota_us`` and ``cpu/cpu.cfs_period_us``, -1: none)."""
    try:
        if (root / "cpu.max").is_file():
            quota, period = (root / "cpu.max").read_text().split()[:2]
        elif (root / "cpu" / "cpu.cfs_quota_us").is_file():
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        else:
            return None
        if quota in ("max", "-1") or int(period) <= 0 or int(quota) <= 0:
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None  # unreadable or unexpected: no quota known


def available_cores() -> int:
    """The CPU cores this process may use: its affinity (not the machine's
    count), and at most what a cgroup CPU quota allows."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return cores if limit is None else max(1, min(cores, limit))


def threads_per_worker(workers: int) -> int:
    """Each of ``workers`` processes' share of this machine's cores (at least one)."""
    return max(1, available_cores() // max(1, workers))


def use_threads(threads: int) -> None:
    """The CPU threads every model call in this process may use: PyTorch's
    and, for backends made afterwards, ONNX Runtime's and OpenVINO's. A
    worker among N on one machine (a Ray actor, a service worker) takes
    :func:`threads_per_worker` so that N of them do not oversubscribe the cores."""
    global _process_threads
    if not 1 <= threads <= 4096:
        raise ConfigError(f"threads must be in [1, 4096], got {threads}", setting="threads")
    torch.set_num_threads(threads)
    _process_threads = threads


def process_threads() -> int | None:
    """The thread count :func:`use_threads` set (``None``: each engine's default)."""
    return _process_threads


@dataclass
class BackendOutput:
    """``noise`` ``(N, C, p, p)``: the predicted noise of each patch;
    ``repair`` ``(N, C, p, p)``: its one-step repair x0_hat - x."""

    noise: torch.Tensor
    repair: torch.Tensor


@dataclass
class ModelFile:
    """What an exported model file holds: its metadata (as ``radar.json``),
    the calibration features, the backend that runs its graph and the
    conformal features (``None`` when the file holds none)."""

    metadata: dict[str, Any]
    calibration_features: np.ndarray
    backend: NoiseBackend
    conformal: Conformal | None = None


class NoiseBackend:
    """The interface every backend implements.

    - ``__call__(patches, index, level)``: patches ``(N, C, p, p)`` in [0, 1],
      their grid positions ``(N,)`` and pyramid levels ``(N,)`` (indices into
      ``network.scales``) -> ``(N, 2C, p, p)``: the predicted noise, then the
      repair (what the evidence maps stitch);
    - :meth:`predict`: the same as a :class:`BackendOutput`;
    - :meth:`describe`: what ``/model`` and reports show;
    - :meth:`with_noise_settings`: the backend for a config whose noise
      settings (seed, timestep, draws) changed, or a :class:`ConfigError`.

    Optional class methods say how a backend is made: :meth:`from_network`
    (from a fitted PyTorch network), :meth:`open_file` (from an exported model
    file with one of the suffixes in ``reads``) and :meth:`export` (write a
    model file; ``exports`` is its suffix).
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""  # the engine's own name, for people
    reads: ClassVar[tuple[str, ...]] = ()
    exports: ClassVar[str | None] = None
    device: torch.device = torch.device("cpu")

    def __call__(self, patches: torch.Tensor, index: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        output = self.predict(patches, index, level)
        return torch.cat([output.noise, output.repair], 1)

    def predict(self, patches: torch.Tensor, index: torch.Tensor, level: torch.Tensor) -> BackendOutput:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": str(self.device)}

    def with_noise_settings(self, config: RadarConfig) -> NoiseBackend:
        raise ConfigError(f"{', '.join(NOISE_SETTINGS)} are fixed in an exported {self.label} model; change "
                          "them on the model directory and export again", setting=NOISE_SETTINGS[1])

    @classmethod
    def from_network(cls, network: TorchBackend) -> NoiseBackend:
        raise ModelError(f"the {cls.name} backend cannot run a PyTorch network")

    @classmethod
    def open_file(cls, path: Path) -> ModelFile:
        raise ModelError(f"the {cls.name} backend opens no model files")

    @classmethod
    def export(cls, network: TorchBackend, metadata: dict[str, Any], calibration_features: np.ndarray,
               conformal: Conformal, out: Path) -> Path:
        raise ModelError(f"the {cls.name} backend writes no model files")


@BACKENDS.register("torch")
class TorchBackend(NoiseBackend):
    """The fitted diffusers U-Net run by PyTorch, on its own device (CPU or
    CUDA). Holds the weights: the other backends are built from it."""

    label = "PyTorch"

    def __init__(self, unet: UNet2DModel, config: RadarConfig, channels: int) -> None:
        self.unet = unet.eval()
        self.config = config
        self.channels = int(channels)
        self.device = next(unet.parameters()).device
        inference = config.inference
        self.noise: OneStepNoise = one_step_noise(
            unet, timestep=inference.timestep, alphas_cumprod=build_scheduler(config.network).alphas_cumprod,
            seed=config.seed, draws=inference.draws, channels=self.channels, patch_size=config.patch_size)

    def precision(self) -> AbstractContextManager[Any]:
        """The network's number format (``inference.precision``): bfloat16 autocast, or as it is."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.config.inference.precision == "bfloat16")

    def __call__(self, patches: torch.Tensor, index: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self.precision():
            output = torch.cat(self.noise(patches.to(self.device), index.to(self.device), level.to(self.device)), 1)
        return output.float()

    def predict(self, patches: torch.Tensor, index: torch.Tensor, level: torch.Tensor) -> BackendOutput:
        with torch.inference_mode(), self.precision():
            noise, repair = self.noise(patches.to(self.device), index.to(self.device), level.to(self.device))
        return BackendOutput(noise.float(), repair.float())

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "parameters": sum(p.numel() for p in self.unet.parameters())}

    def with_noise_settings(self, config: RadarConfig) -> TorchBackend:
        return TorchBackend(self.unet, config, self.channels)

    @classmethod
    def from_network(cls, network: TorchBackend) -> TorchBackend:
        return network

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The U-Net's weights, on the CPU (what a model directory stores)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.unet.state_dict().items()}
