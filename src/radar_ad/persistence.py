"""Model files: a model directory (``radar.json`` + safetensors, nothing that runs code)
written atomically and read back with every way it can be broken reported
as one :class:`ModelError` line.

This module moves bytes and checks formats; ``Radar.save`` and
``Radar.load`` (:mod:`radar_ad.pipeline`) decide what goes in.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .errors import DataError, ModelError, first_line
from .files import temporary_dir

FORMAT = "radar-ad"
FORMAT_VERSION = 2
CONFIG_FILE = "radar.json"
WEIGHTS_FILE = "unet.safetensors"
CALIBRATION_FILE = "calibration.safetensors"
CALIBRATION_KEY = "calibration_features"
CHECKPOINT_SUFFIX = ".checkpoint"


def check_metadata(meta: Any, where: str) -> None:
    """Refuse metadata of another format or format version."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{where} is not a radar-ad model file")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{where} has model format version {meta.get('format_version')!r}; "
                         f"this radar-ad ({__version__}) reads version {FORMAT_VERSION}; "
                         "train the model again with it")


def check_model_target(path: Path) -> None:
    """Refuse to replace anything but an empty folder or a model directory,
    so a typo in an output path cannot wipe a user's data."""
    if path.exists() and not (path.is_dir() and (not any(path.iterdir())
                                                 or (path / CONFIG_FILE).is_file())):
        raise DataError(f"{path} exists and is not a radar model directory; "
                        "refusing to overwrite it")


def checkpoint_dir(model_dir: Path) -> Path:
    """Where training keeps its checkpoint for ``model_dir``."""
    return model_dir.with_name(model_dir.name + CHECKPOINT_SUFFIX)


def write_model_dir(path: Path, metadata: dict[str, Any], weights: dict[str, torch.Tensor],
                    calibration_features: np.ndarray) -> Path:
    """Write a model directory atomically: built beside ``path`` under a
    temporary name, then renamed (an existing model directory is replaced)."""
    check_model_target(path)
    tmp = temporary_dir(path)
    try:
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        save_file({CALIBRATION_KEY: torch.from_numpy(np.ascontiguousarray(calibration_features))},
                  str(tmp / CALIBRATION_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(metadata, indent=2))
        if path.exists():
            old = temporary_dir(path)
            os.replace(path, old / "model")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_model_dir(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], np.ndarray]:
    """``(metadata, weights, calibration features)`` of a model directory."""
    if not path.is_dir():
        raise ModelError(f"model not found: {path} (expected a model directory "
                         "from `radar train` or a model file from `radar export`)")
    meta_path = path / CONFIG_FILE
    if not meta_path.is_file():
        raise ModelError(f"{path} is not a radar model directory (no {CONFIG_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {meta_path}: {exc}") from None
    check_metadata(meta, str(meta_path))
    for name in (WEIGHTS_FILE, CALIBRATION_FILE):
        if not (path / name).is_file():
            raise ModelError(f"model directory {path} is incomplete: {name} is missing")
    try:
        weights = load_file(str(path / WEIGHTS_FILE))
        calibration = load_file(str(path / CALIBRATION_FILE))[CALIBRATION_KEY].numpy()
    except (KeyError, OSError, SafetensorError) as exc:
        raise ModelError(f"cannot load model from {path}: {first_line(exc)}") from None
    return meta, weights, calibration
