"""The model-directory workflows behind ``radar train`` and ``radar
calibrate-false-alarms``: the checks before the work, the checkpoint beside
the output while training, and the backup of the replaced conformal file."""

from __future__ import annotations

import os
from pathlib import Path

from .config import RadarConfig
from .data import list_images
from .errors import ModelError
from .persistence import check_model_target, checkpoint_dir, replace_conformal
from .pipeline import Radar
from .training import DeviceStrategy, check_checkpoint_dir, remove_checkpoint_dir


def train_model(config: RadarConfig, data: str | Path, out: str | Path, *, resume: bool = False,
                device: str | None = None, progress: bool = True, strategy: DeviceStrategy | None = None) -> Radar:
    """Train on ``data`` and write the model directory ``out``: the output
    location is checked first, a checkpoint is kept beside it while training
    (``resume`` continues one) and removed once the model is written.

    With a data-parallel ``strategy`` every process runs this: all check the
    output (the same answer on a shared filesystem, so all stop together),
    train, and wait while the main process calibrates and writes the model."""
    out = Path(os.path.abspath(out))  # "." names the working folder
    check_model_target(out)  # before training, not after an hour of it
    checkpoint = checkpoint_dir(out)
    check_checkpoint_dir(checkpoint)  # a user's folder of that name: refused before any work
    radar = Radar(config, device=device).fit(data, progress=progress, checkpoint_dir=checkpoint, resume=resume,
                                             strategy=strategy)
    if strategy is None or strategy.is_main:
        radar.save(out)
        remove_checkpoint_dir(checkpoint)  # ours only (anything else was refused before training)
    if strategy is not None:
        strategy.wait()  # the others return once the model directory is in place
    return radar


def calibrate_false_alarms(model_dir: str | Path, normal: str | Path, *, device: str | None = None,
                           progress: bool = True) -> tuple[Radar, Path | None]:
    """:meth:`Radar.calibrate_false_alarms` on a model directory: replace its
    conformal images by the normal images in ``normal`` (a folder, or an
    MVTec category's ``train/good``), keeping the network, the response, the
    one-class model and the pixel threshold. The previous conformal file
    stays beside the new one as a backup, whose path is returned (``None``
    for a model that had none). Returns the recalibrated model too."""
    model_dir = Path(model_dir)
    if model_dir.is_file():
        raise ModelError(f"{model_dir} is an exported file; calibrate the model directory it was "
                         "exported from, then export it again")
    radar = Radar.load(model_dir, device=device)
    radar.calibrate_false_alarms(list_images(normal), progress=progress, source=str(normal))
    calibration = radar.calibration_
    assert calibration is not None  # calibrate_false_alarms leaves one
    return radar, replace_conformal(model_dir, calibration.conformal())
