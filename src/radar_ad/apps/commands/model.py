"""The verbs that make or change a model: ``radar train``, ``radar
calibrate-false-alarms`` and ``radar export``."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from ...config import RadarConfig
from ...errors import ConfigError, DataError, Interrupted
from ...registry import BACKENDS, choices
from .common import DEVICE_HELP, INVOCATION, parse_set

if TYPE_CHECKING:
    from ...pipeline import Radar
    from ...scale.distributed import AccelerateStrategy

EXPORT_FORMATS = tuple(name for name, declared in BACKENDS.declared().items() if declared.get("exports"))


def train(
    data: Path = typer.Argument(..., help="Folder of normal images, or an MVTec-layout category."),
    out: Path = typer.Option(..., "--out", "-o", help="Model directory to write."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="JSON config file."),
    steps: Optional[int] = typer.Option(None, help="Training steps."),
    batch_size: Optional[int] = typer.Option(None, help="Patches per training step."),
    patch_size: Optional[int] = typer.Option(None, help="Patch size in pixels."),
    resize: Optional[int] = typer.Option(None, help="Scale the longer image side to this many px."),
    rgb: bool = typer.Option(False, "--rgb", help="Use colour (default: grayscale)."),
    seed: Optional[int] = typer.Option(None, help="Seed of every random draw."),
    false_alarm_rate: Optional[float] = typer.Option(
        None, help="Flag an image when its p-value is at most this: at most this share of normal images "
        "flagged (default 0.05; --set decision.false_alarm_rate=null: the contamination rule)."),
    conformal_size: Optional[int] = typer.Option(None, help="Normal images held out from everything for the "
                                                 "p-values (default: train.conformal_fraction, 20 %)."),
    set_: list[str] = typer.Option([], "--set", help="Any setting, e.g. --set inference.stride=7."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: CUDA if present)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its checkpoint."),
    mixed_precision: Optional[str] = typer.Option(
        None, help="no, bf16 or fp16 (CUDA only): train in mixed precision through Accelerate "
        "(default: the launcher's --mixed_precision, else no)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train on normal images and write a model directory.

    Under a launcher (`accelerate launch -m radar_ad train ...`, `torchrun ...`)
    it trains data-parallel on every process: --batch-size is the global batch."""
    from ...persistence import checkpoint_dir
    from ...training import CHECKPOINT_FILE
    from ...workflows import train_model

    config = RadarConfig.from_file(config_file) if config_file else RadarConfig()
    overrides = {k: v for k, v in {"train.steps": steps, "train.batch_size": batch_size,
                                   "patch_size": patch_size, "data.resize": resize, "seed": seed,
                                   "decision.false_alarm_rate": false_alarm_rate,
                                   "train.conformal_size": conformal_size}.items() if v is not None}
    if rgb:
        overrides["data.grayscale"] = False
    overrides.update(parse_set(set_))
    config = config.updated(overrides)
    checkpoint = checkpoint_dir(Path(os.path.abspath(out)))  # "." names the working folder
    if resume and not (checkpoint / CHECKPOINT_FILE).is_file():
        raise DataError(f"nothing to resume: no checkpoint at {checkpoint}")
    if not resume and (checkpoint / CHECKPOINT_FILE).is_file() and os.environ.get("RANK", "0") == "0":
        typer.echo(f"note: starting afresh; the checkpoint in {checkpoint} will be replaced "
                   "(--resume continues it)", err=True)
    strategy = _distributed_strategy(mixed_precision, device)
    try:
        radar = train_model(config, data, out, resume=resume, device=device, progress=not quiet, strategy=strategy)
    except KeyboardInterrupt:
        raise Interrupted(_how_to_resume(checkpoint, config.train.checkpoint_every)
                          if strategy is None or strategy.is_main else "interrupted") from None
    if strategy is not None and not strategy.is_main:
        return  # rank 0 reports
    info = radar.training_
    typer.echo(f"model written to {out} ({info['n_train']} training + {info['n_calibration']} "
               f"calibration + {info['n_conformal']} conformal images, {info['steps']} steps in "
               f"{info['seconds']:.0f} s, final loss {info['final_loss']:.4f}); {radar.false_alarms()['rule']}")
    typer.echo(_selection_line(radar))


def _selection_line(radar: Radar) -> str:
    """What the model reads an image with, and, when calibration chose it, its synthetic-defect AUROC."""
    from ...selection import describe_record

    inference = radar.config.inference
    record = radar.selection()
    if record is None:
        scales = inference.scales or ()  # named: a fitted model's config names what calibration chose
        return (f"response {inference.response} on scales {'/'.join(map(str, scales))}, image score "
                f"{inference.image_score} (as configured)")
    return describe_record(record)


def _distributed_strategy(mixed_precision: str | None, device: str | None) -> AccelerateStrategy | None:
    """Accelerate's data-parallel strategy when launched on several processes
    or asked for mixed precision; ``None`` (plain ``radar train``) otherwise."""
    from ...scale.distributed import AccelerateStrategy, launched, wanted_mixed_precision

    if not launched() and wanted_mixed_precision(mixed_precision) == "no":
        return None
    return AccelerateStrategy(mixed_precision, device)


def _how_to_resume(checkpoint: Path, every: int) -> str:
    """What an interrupted `radar train` left, and the command that continues it."""
    from ...training import checkpoint_step

    step = checkpoint_step(checkpoint)
    if step is None:
        return (f"interrupted before the first checkpoint (one every {every} steps); nothing to resume, "
                "run the same command again")
    command = ["radar", *(INVOCATION or ["train", "DATA", "--out", "OUT"])]
    if "--resume" not in command:
        command.append("--resume")
    return f"interrupted; the checkpoint of step {step} is in {checkpoint}; continue with: {shlex.join(command)}"


def calibrate_false_alarms(
    model_dir: Path = typer.Argument(..., help="Model directory from `radar train`."),
    normal_dir: Path = typer.Argument(..., help="Folder of new normal images that the model never saw."),
    device: Optional[str] = typer.Option(None, help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Replace the conformal images (p-values, false-alarm threshold) by new normal images.

    Keeps the network, the response, the one-class model and the pixel
    threshold; the previous conformal file stays beside the new one as a backup."""
    from ...workflows import calibrate_false_alarms as calibrate_model_dir

    radar, backup = calibrate_model_dir(model_dir, normal_dir, device=device, progress=not quiet)
    facts = radar.false_alarms()
    threshold = radar.decision_.threshold_
    typer.echo(f"{model_dir}: {facts['n_conformal']} conformal images from {normal_dir}; smallest p-value "
               f"{facts['smallest_p_value']:.4f}; image threshold "
               + (f"{threshold:.6f}" if threshold != float("inf") else "none (nothing can be flagged)")
               + f"; {facts['rule']}")
    typer.echo(f"previous conformal images kept as {backup}" if backup else
               "the model had no conformal images before; radar.json is unchanged")
    typer.echo("drift monitors of this model (radar watch, radar serve --state) start afresh on their next image")


def export(
    model_dir: Path = typer.Argument(..., help="Model directory from `radar train`."),
    out: Path = typer.Option(..., "--out", "-o", help="File to write, e.g. model.onnx."),
    format_: str = typer.Option(EXPORT_FORMATS[0], "--format", help=f"Export format: {choices(EXPORT_FORMATS)}."),
    force: bool = typer.Option(False, "--force", help="Replace an existing file at --out (never a model's own)."),
) -> None:
    """Write the model as one self-contained file (network, noising step,
    thresholds and calibration in its metadata), checked against PyTorch."""
    from ...pipeline import Radar

    formats = tuple(name for name, backend in BACKENDS.items() if backend.exports)
    if format_ not in formats:
        raise ConfigError(f"format must be {choices(formats)}, got {format_!r}", setting="format")
    if out.is_dir():
        raise DataError(f"{out} is a folder; give a file name such as model{BACKENDS.get(format_).exports}")
    if Path(os.path.abspath(out)).is_relative_to(Path(os.path.abspath(model_dir))) or (
            model_dir.is_dir() and out.resolve().is_relative_to(model_dir.resolve())):
        raise DataError(f"{out} is inside the model directory {model_dir}; write the export beside it")
    if out.exists() and not force:
        raise DataError(f"{out} exists; refusing to replace it (--force replaces it)")
    Radar.load(model_dir, device="cpu").export(out, format_)
    typer.echo(f"{format_} model written to {out} ({out.stat().st_size / 2**20:.1f} MiB); "
               f"use it with `radar detect {out} IMAGES --out DIR`")
