"""Training the patch diffusion network, in three parts:

- the loss step (:func:`diffusion_loss`): the standard DDPM epsilon
  objective, noising with the diffusers scheduler's ``add_noise``, for
  patches of every pyramid level (the level is the network's class label);
  with a repair output, plus the repair of patches that carry a synthetic
  defect (:func:`with_synthetic_defects`): defect-aware training, so that
  the one-step evaluation of a defect points back to the normal patch
  instead of being whatever an unseen input happens to give;
- the loop (:func:`train_unet`): patch, level, defect and timestep draws,
  AdamW with warm-up + cosine learning rate, optional EMA, progress,
  checkpoints and resume;
- the device strategy (:class:`DeviceStrategy`): where tensors live, how the
  backward pass runs and which process writes checkpoints. The default runs
  on one device; a distributed launcher plugs in its own without touching
  the loop.

Every random draw (patch positions, timesteps, noise) comes from one CPU
generator seeded from the config, so a run is reproducible, a resumed run
continues the very same sequence of draws, and CPU and GPU see the same data.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from safetensors import SafetensorError, safe_open

from .config import RadarConfig
from .defects import VISIBLE, paste_into
from .errors import ConfigError, DataError, ModelError, NonFiniteError
from .files import atomic_file, save_tensors
from .patches import PyramidSampler
from .progress import progress_bar

CHECKPOINT_FILE = "checkpoint.safetensors"
# Written into every checkpoint folder training creates: only a folder with it
# (or, from releases before the marker, with a checkpoint file) is ever reused or removed.
CHECKPOINT_MARKER = ".radar-ad-checkpoint"


def is_checkpoint_dir(directory: Path) -> bool:
    """Whether ``directory`` is a checkpoint folder radar-ad training made:
    a folder (not a link) holding :data:`CHECKPOINT_MARKER`."""
    return not directory.is_symlink() and (directory / CHECKPOINT_MARKER).is_file()


def remove_checkpoint_dir(directory: Path) -> bool:
    """Remove a checkpoint folder training made (:func:`is_checkpoint_dir`),
    and nothing else. Returns whether it was."""
    if not is_checkpoint_dir(directory):
        return False
    shutil.rmtree(directory, ignore_errors=True)
    return True


def check_checkpoint_dir(directory: Path, removed_after: bool = True) -> None:
    """Refuse, before the first step, a checkpoint location that radar-ad
    training did not make: with ``removed_after`` (the folder is removed
    once the model is written) even an empty folder; else an empty folder
    the caller named is written into, and kept."""
    if directory.is_dir() and not directory.is_symlink() and not removed_after and not any(directory.iterdir()):
        return
    if (directory.exists() or directory.is_symlink()) and not is_checkpoint_dir(directory):
        raise DataError(f"{directory} exists and was not made by radar-ad training; refusing to write "
                        "checkpoints into it (move it, or choose another output)")


@dataclass
class TrainResult:
    """What a training run produced besides the weights in the U-Net."""

    steps: int
    seconds: float
    final_loss: float
    patches_per_second: float
    resumed_from: int = 0
    loss_history: list[float] = field(default_factory=list)


def learning_rate(step: int, config: RadarConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the base rate; a pure
    function of the step, so resuming needs no scheduler state."""
    train = config.train
    if step < train.warmup_steps:
        return train.learning_rate * (step + 1) / train.warmup_steps
    span = max(1, train.steps - train.warmup_steps)
    progress = min(1.0, (step - train.warmup_steps) / span)
    return train.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _training_fingerprint(config: RadarConfig, channels: int, images: dict | None = None,
                          world_size: int = 1) -> dict:
    """The settings (and, when given, the training images' digest) a
    checkpoint must share with the run that resumes it, in JSON form (lists,
    not tuples) so it compares equal to a stored copy. The number of
    processes is part of it from two on: each draws its own patches."""
    settings = json.loads(config.to_json())
    fingerprint = {"patch_size": settings["patch_size"], "seed": settings["seed"], "channels": channels,
                   "data": settings["data"], "network": settings["network"],
                   "train": {k: v for k, v in settings["train"].items()
                             if k not in ("steps", "checkpoint_every")},
                   "images": images}
    return fingerprint if world_size == 1 else {**fingerprint, "processes": world_size}


def images_digest(images: list[torch.Tensor] | list) -> dict:
    """What identifies a set of training images: their number and a SHA-256
    of their pixels and shapes, in order (a changed, added, removed or
    reordered image changes it; renaming or touching a file does not)."""
    digest = hashlib.sha256()
    for image in images:
        array = image.numpy() if isinstance(image, torch.Tensor) else image
        digest.update(repr(tuple(array.shape)).encode())
        digest.update(array.tobytes())
    return {"count": len(images), "sha256": digest.hexdigest()}


def fingerprint_changes(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """What differs between a checkpoint's fingerprint and this run's, in
    words: ``["the training images (30 then, 31 now)", "train.batch_size (16 then, 32 now)"]``."""
    changes = []
    for key in sorted(set(saved) | set(current)):
        absent = 1 if key == "processes" and not prefix else None  # one process records none
        then, now = saved.get(key, absent), current.get(key, absent)
        if then == now:
            continue
        if key == "images" and not prefix:
            counts = (then or {}).get("count"), (now or {}).get("count")
            changes.append(f"the training images ({counts[0]} then, {counts[1]} now"
                           + (", same number but other pixels)" if counts[0] == counts[1] else ")"))
        elif isinstance(then, dict) and isinstance(now, dict):
            changes += fingerprint_changes(then, now, f"{prefix}{key}.")
        else:
            changes.append(f"{prefix}{key} ({json.dumps(then)} then, {json.dumps(now)} now)")
    return changes


def diffusion_loss(unet: UNet2DModel, scheduler: DDPMScheduler, patches: torch.Tensor, timesteps: torch.Tensor,
                   noise: torch.Tensor, levels: torch.Tensor, repair: torch.Tensor | None = None) -> torch.Tensor:
    """The DDPM loss step: ``|| noise - eps_theta(add_noise(x, noise, t), t, level) ||^2``
    for patches x ``(N, C, p, p)`` in [-1, 1] of pyramid ``levels`` ``(N,)``.

    ``repair`` ``(N, C, p, p)``: the repair target of a network with a
    repair output (the defect-free patch less the input; 0 where the patch
    is normal), added as a squared error weighted by abar_t, so it counts
    where the patch is still visible under the noise. The noise term then
    counts the normal patches only: the noise prediction never learns a
    defect as normal, so on one it stays "whatever an unseen input gives",
    the paper's signal, while the repair learns the way back."""
    noisy = scheduler.add_noise(patches, noise, timesteps)
    output = unet(noisy, timesteps, class_labels=levels).sample
    channels = patches.shape[1]
    if repair is None:
        return F.mse_loss(output[:, :channels], noise)
    normal = (repair == 0).flatten(1).all(1).to(output.dtype)  # (N,): patches without a synthetic defect
    per_patch = (output[:, :channels] - noise).pow(2).flatten(1).mean(1)
    loss = (per_patch * normal).sum() / normal.sum().clamp_min(1)
    weight = scheduler.alphas_cumprod.to(output)[timesteps].view(-1, 1, 1, 1)
    return loss + ((output[:, channels:] - repair) ** 2 * weight).mean()


def with_synthetic_defects(patches: torch.Tensor, share: float,
                           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, repair)`` for clean patches ``(N, C, p, p)`` in [0, 1]: a
    ``share`` of them (drawn from ``generator``) carry a synthetic defect
    (:func:`~radar_ad.defects.paste_into`, up to the patch in extent, foreign
    texture from another patch of the batch); ``repair`` is ``2 * (clean -
    input)``, the way back to the clean patch in the network's [-1, 1] units."""
    count, size = int(patches.shape[0]), int(patches.shape[-1])
    # one draw of the torch generator seeds the step's numpy draws: a resumed run repeats them
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
    inputs = patches.clone()
    clean = patches.numpy()
    for i in np.nonzero(rng.random(count) < share)[0].tolist():
        other = clean[(i + 1 + int(rng.integers(max(1, count - 1)))) % count]
        defective, _ = paste_into(clean[i], other, rng, largest=size, visible=VISIBLE)
        inputs[i] = torch.from_numpy(defective)
    return inputs, (patches - inputs) * 2


def rank_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank``'s draws in data-parallel training: the
    config's seed itself for rank 0 (so one process draws exactly what
    ``radar train`` draws), a distinct seed derived from it for the others."""
    if rank == 0:
        return seed
    return int(hashlib.sha256(f"radar-ad rank seed {seed} {rank}".encode()).hexdigest()[:15], 16)


class DeviceStrategy:
    """Where training runs: one process on one device (the default).

    The loop asks the strategy to :meth:`prepare` the model and optimiser,
    to move each batch (:meth:`to_device`), to run :meth:`backward` and
    :meth:`clip_grad_norm`, for the loss averaged over processes
    (:meth:`mean`), for every process's RNG state (:meth:`gather`), and
    whether this process :attr:`is_main` (the one that writes checkpoints).
    A data-parallel launcher (``radar_ad.scale.distributed``) implements the
    same methods; ``train.batch_size`` is then the global batch, each of
    :attr:`world_size` processes drawing its :meth:`local_batch` share.
    """

    rank = 0
    world_size = 1
    mixed_precision = "no"

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_batch(self, batch_size: int) -> int:
        """This process's share of the global batch; refused unless it divides evenly."""
        if batch_size % self.world_size:
            raise ConfigError(f"train.batch_size ({batch_size}) is the global batch and must divide evenly "
                              f"among {self.world_size} processes; choose a multiple of {self.world_size}",
                              setting="train.batch_size")
        return batch_size // self.world_size

    def prepare(self, unet: torch.nn.Module, optimizer: torch.optim.Optimizer,
                ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        return unet, optimizer

    def release(self, model: torch.nn.Module) -> None:
        """Undo what :meth:`prepare` wrapped around the network (nothing here)."""

    def to_device(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t.to(self.device) for t in tensors)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm(self, params: list[torch.nn.Parameter], max_norm: float) -> None:
        torch.nn.utils.clip_grad_norm_(params, max_norm)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` averaged over every process (itself with one)."""
        return value

    def gather(self, state: torch.Tensor) -> list[torch.Tensor]:
        """Every process's ``state`` (same shape on each), in rank order."""
        return [state]

    def wait(self) -> None:
        """Wait for every process (nothing to wait for with one)."""


def train_unet(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    sampler: PyramidSampler,
    config: RadarConfig,
    device: torch.device | DeviceStrategy,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    images: dict | None = None,
) -> TrainResult:
    """Train ``unet`` in place; when EMA is on, the EMA weights are copied into
    it at the end (they are what inference uses). ``images``: the training
    images' :func:`images_digest`, stored in checkpoints so that a resume
    with other images is refused.

    A loss that is not finite stops training with a :class:`NonFiniteError`
    before it reaches the weights; the last checkpoint stays as it was."""
    train = config.train
    strategy = device if isinstance(device, DeviceStrategy) else DeviceStrategy(device)
    channels = sampler.channels
    batch = strategy.local_batch(train.batch_size)
    generator = torch.Generator().manual_seed(rank_seed(config.seed, strategy.rank))
    unet.to(strategy.device).train()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.learning_rate, weight_decay=train.weight_decay)
    ema = [p.detach().clone() for p in params] if train.ema_decay > 0 else None
    model, prepared = strategy.prepare(unet, optimizer)
    max_t = min(train.max_timestep or scheduler.config.num_train_timesteps,
                scheduler.config.num_train_timesteps)
    fingerprint = _training_fingerprint(config, channels, images, strategy.world_size)

    if checkpoint_dir is not None:  # written into, never removed here
        check_checkpoint_dir(checkpoint_dir, removed_after=False)
    start, history = 0, list[float]()
    if resume and checkpoint_dir is not None and (checkpoint_dir / CHECKPOINT_FILE).is_file():
        start, history = _load_checkpoint(checkpoint_dir, unet, optimizer, ema, generator,
                                          fingerprint, strategy.device, strategy.rank)
    if start >= train.steps:
        start = train.steps

    began = time.perf_counter()
    bar = progress_bar(total=train.steps, initial=start, enabled=progress and strategy.is_main, desc="training",
                       unit="step")
    loss_value = float("nan")
    repairs = config.network.repair
    for step in range(start, train.steps):
        patches, levels = sampler.sample(batch, generator)
        repair = torch.zeros_like(patches)
        if train.defect_share > 0:
            patches, repair = with_synthetic_defects(patches, train.defect_share, generator)
        timesteps = torch.randint(0, max_t, (batch,), generator=generator)
        noise = torch.randn(patches.shape, generator=generator)
        patches, timesteps, noise, levels, repair = strategy.to_device(patches * 2 - 1, timesteps, noise, levels,
                                                                       repair)
        for group in prepared.param_groups:
            group["lr"] = learning_rate(step, config)
        loss = diffusion_loss(model, scheduler, patches, timesteps, noise, levels, repair if repairs else None)
        global_loss = strategy.mean(loss.detach().float())  # every process stops together on a non-finite one
        if not torch.isfinite(global_loss):
            raise NonFiniteError(_diverged(float(global_loss), step, checkpoint_dir))
        prepared.zero_grad(set_to_none=True)
        strategy.backward(loss)
        strategy.clip_grad_norm(params, 1.0)
        prepared.step()
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - train.ema_decay)
        loss_value = float(global_loss)
        history.append(loss_value)
        done = step + 1 - start
        elapsed = time.perf_counter() - began
        bar.update(1)
        if step % 10 == 0 or step + 1 == train.steps:
            bar.set_postfix(loss=f"{sum(history[-50:]) / len(history[-50:]):.4f}",
                            patches_s=f"{done * train.batch_size / max(elapsed, 1e-9):.0f}")
        if checkpoint_dir is not None and ((step + 1) % train.checkpoint_every == 0
                                           or step + 1 == train.steps):
            rng_states = strategy.gather(generator.get_state())  # every process's, for its resume
            if strategy.is_main:
                _save_checkpoint(checkpoint_dir, step + 1, unet, optimizer, ema, rng_states,
                                 fingerprint, history)
            strategy.wait()
    bar.close()
    strategy.release(model)
    seconds = time.perf_counter() - began
    if ema is not None:
        with torch.no_grad():
            for param, shadow in zip(params, ema):
                param.copy_(shadow)
    unet.eval()
    done = train.steps - start
    recent = history[-50:] or [loss_value]
    return TrainResult(steps=train.steps, seconds=seconds, final_loss=sum(recent) / len(recent),
                       patches_per_second=done * train.batch_size / max(seconds, 1e-9),
                       resumed_from=start, loss_history=history)


def _save_checkpoint(directory: Path, step: int, unet: UNet2DModel, optimizer: torch.optim.Optimizer,
                     ema: list[torch.Tensor] | None, rng_states: list[torch.Tensor],
                     fingerprint: dict, history: list[float]) -> None:
    """Weights, optimiser moments, EMA and every process's RNG state (``rng``,
    then ``rng.1`` ... in data-parallel runs) in one safetensors file (step
    and settings in its metadata), replaced atomically so a kill mid-write
    leaves the last good checkpoint."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in unet.state_dict().items()}
    if not all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point()):
        raise NonFiniteError(_diverged(float("nan"), step - 1, directory, "weights"))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CHECKPOINT_MARKER).touch()
    state = optimizer.state_dict()
    for index, moments in state["state"].items():
        for name, value in moments.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    if ema is not None:
        tensors.update({f"ema.{i}": t.detach().cpu().contiguous() for i, t in enumerate(ema)})
    for rank, rng_state in enumerate(rng_states):
        tensors[_rng_key(rank)] = rng_state.cpu().contiguous()
    meta = {"step": str(step), "fingerprint": json.dumps(fingerprint),
            "loss_history": json.dumps(history)}
    with atomic_file(directory / CHECKPOINT_FILE) as tmp:
        save_tensors(tensors, tmp, metadata=meta)


def _diverged(value: float, step: int, checkpoint_dir: Path | None, what: str = "loss") -> str:
    """The one line that says training diverged and what is left of it."""
    kept = checkpoint_step(checkpoint_dir) if checkpoint_dir is not None else None
    return (f"training diverged: the {what} became {value} at step {step + 1}; nothing was written"
            + (f"; the last good checkpoint (step {kept}) is in {checkpoint_dir}" if kept else "")
            + " (lower train.learning_rate or raise train.warmup_steps and train again)")


def checkpoint_step(directory: Path) -> int | None:
    """The step a checkpoint folder holds, or ``None`` without a readable one."""
    try:
        with safe_open(str(directory / CHECKPOINT_FILE), framework="pt") as handle:
            return int((handle.metadata() or {})["step"])
    except (OSError, ValueError, KeyError, SafetensorError):
        return None


def _rng_key(rank: int) -> str:
    return "rng" if rank == 0 else f"rng.{rank}"


def _load_checkpoint(directory: Path, unet: UNet2DModel, optimizer: torch.optim.Optimizer,
                     ema: list[torch.Tensor] | None, generator: torch.Generator,
                     fingerprint: dict, device: torch.device, rank: int = 0) -> tuple[int, list[float]]:
    try:
        path = str(directory / CHECKPOINT_FILE)
        with safe_open(path, framework="pt") as handle:  # one read: metadata and tensors
            meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (a safetensors handle, not a dict)
        step, saved = int(meta["step"]), json.loads(meta["fingerprint"])
        history = json.loads(meta.get("loss_history", "[]"))
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise ModelError(f"cannot resume from {directory}: {exc}") from None
    if saved != fingerprint:
        changed = fingerprint_changes(saved, fingerprint)
        raise ModelError(f"cannot resume from {directory}: changed since it was made: "
                         + ("; ".join(changed) or "the training images or settings")
                         + " (train afresh without --resume, or resume with what it was made with)")
    unet.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state = optimizer.state_dict()
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            moments.setdefault(int(index), {})[name] = value.to(device) if name != "step" else value
    state["state"] = moments
    optimizer.load_state_dict(state)
    if ema is not None:
        for i, shadow in enumerate(ema):
            shadow.copy_(tensors[f"ema.{i}"].to(device))
    generator.set_state(tensors[_rng_key(rank)])
    return step, list(history)
