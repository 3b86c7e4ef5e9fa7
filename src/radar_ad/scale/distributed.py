"""Data-parallel training on N processes with Hugging Face Accelerate
(``pip install 'radar-ad[distributed]'``).

Launch the ordinary command under a launcher, on one machine or several::

    accelerate launch --num_processes 2 -m radar_ad train DATA --out MODEL
    torchrun --nproc_per_node 2 -m radar_ad train DATA --out MODEL        # the same

Every process loads the images and runs the same loop
(:func:`radar_ad.training.train_unet`) through :class:`AccelerateStrategy`:

- ``train.batch_size`` is the global batch; each of N processes draws its
  ``batch_size / N`` patches from its own generator (rank 0: the config's
  seed, so one process draws exactly what ``radar train`` draws; rank r: a
  seed derived from it, :func:`~radar_ad.training.rank_seed`);
- gradients are averaged by DistributedDataParallel (gloo on CPUs, NCCL on
  GPUs), the loss is averaged for the progress bar and the divergence check;
- checkpoints stay one safetensors file written by rank 0 alone, holding
  every rank's RNG state (Accelerate's ``save_state`` would write pickles),
  so ``--resume`` under the same N continues every rank's exact sequence;
- rank 0 alone calibrates and writes the model directory; the others wait.

Mixed precision (``bf16`` or ``fp16``, the latter on CUDA only) comes from
``--mixed-precision`` or the launcher's ``--mixed_precision``.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch

from ..errors import ConfigError, require
from ..training import DeviceStrategy

MIXED_PRECISION = ("no", "bf16", "fp16")
# Rank 0 calibrates while the others wait at a barrier: long enough for a big folder.
WAIT_TIMEOUT = timedelta(hours=4)


def launched() -> bool:
    """Whether this process was started by a distributed launcher
    (``accelerate launch`` / ``torchrun`` with more than one process)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def wanted_mixed_precision(option: str | None) -> str:
    """The mixed precision asked for: the option, else the launcher's
    (``ACCELERATE_MIXED_PRECISION``), else ``no``; refused in one line when unknown."""
    value = (option or os.environ.get("ACCELERATE_MIXED_PRECISION") or "no").lower()
    if value not in MIXED_PRECISION:
        raise ConfigError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {value!r}",
                          setting="mixed_precision")
    return value


class AccelerateStrategy(DeviceStrategy):
    """The training loop's device strategy over Accelerate's processes.

    ``device``: ``cpu`` forces CPU processes (gloo) even where CUDA exists;
    otherwise each process takes its GPU (``LOCAL_RANK``, NCCL) when there
    is one, and runs on the CPU (gloo) when there is none.
    """

    def __init__(self, mixed_precision: str | None = None, device: str | None = None) -> None:
        require("accelerate", "distributed", "multi-process training")
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        precision = wanted_mixed_precision(mixed_precision)
        # without CUDA, Accelerate forms a process group only when told the processes are CPU ones
        cpu = (device is not None and torch.device(device).type == "cpu") or not torch.cuda.is_available()
        if precision == "fp16" and cpu:
            raise ConfigError("mixed_precision fp16 needs CUDA; use bf16 on CPUs", setting="mixed_precision")
        self.accelerator = Accelerator(mixed_precision=precision, cpu=cpu,
                                       kwargs_handlers=[InitProcessGroupKwargs(timeout=WAIT_TIMEOUT)])
        self.device = self.accelerator.device
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.mixed_precision = precision

    def prepare(self, unet: torch.nn.Module, optimizer: torch.optim.Optimizer,
                ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        model, prepared = self.accelerator.prepare(unet, optimizer)
        return model, prepared

    def release(self, model: torch.nn.Module) -> None:
        # removes the autocast wrapper mixed precision put on the network's
        # forward, so calibration and inference run in float32 as always
        self.accelerator.unwrap_model(model, keep_fp32_wrapper=False)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def clip_grad_norm(self, params: list[torch.nn.Parameter], max_norm: float) -> None:
        self.accelerator.clip_grad_norm_(params, max_norm)  # unscales fp16 gradients first

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return value
        return self.accelerator.reduce(value.to(self.device).reshape(1), reduction="mean")[0].cpu()

    def gather(self, state: torch.Tensor) -> list[torch.Tensor]:
        if self.world_size == 1:
            return [state]
        gathered = self.accelerator.gather(state.to(self.device).reshape(1, -1)).cpu()
        return list(gathered.reshape(self.world_size, -1))

    def wait(self) -> None:
        self.accelerator.wait_for_everyone()
