"""The benchmark's trained models: one per dataset and training settings,
trained once and kept in a cache folder, and the variants of it that other
inference or decision settings make (sharing its network).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RadarConfig
from ..data import training_images
from ..errors import NotCalibratedError
from ..persistence import CONFIG_FILE
from ..pipeline import Radar, train_model
from .datasets import DatasetSource, HeldOut


def model_key(config: RadarConfig, dataset: Path) -> str:
    """The training cache key: the settings training depends on (not the
    inference or decision ones, which only need a recalibration), the
    dataset's path and the names and sizes of its training files (a changed
    file retrains)."""
    dataset = Path(dataset)
    listing = [f"{p.relative_to(dataset).as_posix()}:{p.stat().st_size}" for p in training_images(dataset)]
    settings = {k: v for k, v in config.to_dict().items() if k not in ("inference", "decision")}
    payload = json.dumps({"config": settings, "dataset": str(dataset.resolve()), "files": listing},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def trained_model(source: DatasetSource, config: RadarConfig, cache: Path, log: Callable[[str], None],
                  device: str | None = None, progress: bool = True) -> tuple[Radar, Path, bool]:
    """The dataset's model, trained once (:func:`train_model`: resumable,
    checkpoint removed once written) and kept under ``cache``:
    ``(radar, model_dir, reused)``. Loaded from disk either way, so a first
    and a second run score with the very same object. ``log`` hears which."""
    model_dir = cache / f"{source.name}-{model_key(config, source.path)}"
    reused = (model_dir / CONFIG_FILE).is_file()
    if reused:
        log(f"{source.name}: reusing the model in {model_dir} (same training settings and files)")
    else:
        log(f"{source.name}: training a model ({config.train.steps} steps) into {model_dir}")
        train_model(config, source.path, model_dir, resume=True, device=device, progress=progress)
    return Radar.load(model_dir, device=device), model_dir, reused


def setting_value(config: RadarConfig, key: str) -> Any:
    """The value of the dotted setting ``key`` of ``config``."""
    value: Any = config.to_dict()
    for part in key.split("."):
        value = value[part]
    return value


def as_radar_images(images: list[np.ndarray]) -> list[np.ndarray]:
    """``(C, H, W)`` arrays, as the benchmark holds them, -> the ``(H, W, C)``
    ones :class:`Radar` reads (an exact round trip: both came from 8-bit
    files, and the resize is a no-op)."""
    return [image.transpose(1, 2, 0) for image in images]


def radar_variant(radar: Radar, settings: dict[str, Any], held_out: HeldOut) -> tuple[Radar, bool]:
    """``(model, recalibrated)``: ``radar`` with ``settings`` changed,
    sharing its network (:meth:`Radar.with_settings`). A new one-class model
    is refitted on the stored calibration features; a setting that shapes
    the maps (a response, say) is calibrated on ``held_out`` ((C, H, W)
    normal images, the same ones the model was calibrated and conformally
    scored on)."""
    if not settings:
        return radar, False
    twin = radar.with_settings(settings)
    try:
        twin.check_fitted()
    except NotCalibratedError:
        return twin.refit_calibration(as_radar_images(held_out.calibration),
                              conformal=as_radar_images(held_out.conformal)), True
    return twin, False
