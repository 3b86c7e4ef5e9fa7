"""Reading a saved model back: a model directory (written by ``Radar.save``)
or a model file a backend exported, into the parts a fitted ``Radar`` is
made of (:class:`StoredModel`), checked on the way: finite numbers, the
features' width, the refitted one-class model against the saved threshold,
an exported graph against its metadata.

The one-class model is never stored: it is refitted from the stored
calibration features (deterministic given its seed).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backend import NoiseBackend, TorchBackend
from .calibration import Calibration
from .config import RadarConfig
from .decision import ImageDecision
from .errors import ConfigError, DataError, ModelError, first_line
from .network import build_unet, pick_device
from .persistence import (
    RESPONSE_TENSORS_KEY,
    Conformal,
    check_finite_numbers,
    read_conformal,
    read_model_dir,
    tensors_from_text,
)
from .registry import BACKENDS
from .response import restore_response


@dataclass
class StoredModel:
    """A saved model's parts: its config and image channels, the training
    record, the calibration, and the backend that predicts the noise;
    ``torch_backend`` is the PyTorch network (``None`` for an exported file,
    whose graph runs on ``backend`` alone)."""

    config: RadarConfig
    channels: int
    training: dict[str, Any]
    calibration: Calibration
    torch_backend: TorchBackend | None
    backend: NoiseBackend


def read_model(path: Path, device: str | None, backend: str | None) -> StoredModel:
    """The model directory or exported file at ``path``; a directory's
    network on ``device`` as a PyTorch backend, a file on ``backend``
    (default: the backend that exported its kind of file)."""
    if backend is not None:
        BACKENDS.check(backend)
    if path.is_file():
        return _read_model_file(path, backend)
    files = read_model_dir(path)
    meta = files.metadata
    conformal = read_conformal(path)
    try:
        config = RadarConfig.from_dict(meta["config"])
        channels = int(meta["channels"])
        unet = build_unet(config.network, channels, config.patch_size)
        unet.load_state_dict(files.weights)
    except (ConfigError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelError(f"cannot load model from {path}: {first_line(exc)}") from None
    network = TorchBackend(unet.to(pick_device(device)), config, channels)
    return _assemble(meta, files.calibration_features, files.response_tensors, conformal, network, network,
                     str(path))


def _read_model_file(path: Path, backend: str | None) -> StoredModel:
    suffix = path.suffix.lower()
    readers = [name for name, entry in BACKENDS.items() if suffix in entry.reads]
    if not readers:
        raise ModelError(f"{path} is not a model directory or a model file that a backend reads")
    name = backend or next((n for n in readers if BACKENDS.get(n).exports == suffix), readers[0])
    if name not in readers:
        raise ModelError(f"a {suffix} file runs on {', '.join(readers)}, not {name}")
    opened = BACKENDS.get(name).open_file(path)
    text = opened.metadata.get(RESPONSE_TENSORS_KEY)  # none in a file of format 4
    tensors = {} if text is None else tensors_from_text(text, str(path))
    stored = _assemble(opened.metadata, opened.calibration_features, tensors, opened.conformal, None,
                       opened.backend, str(path))
    check_graph(stored.backend, stored.config, stored.channels, path)
    return stored


def _assemble(meta: dict[str, Any], calibration_features: np.ndarray, response_tensors: dict[str, torch.Tensor],
              conformal: Conformal | None, network: TorchBackend | None, backend: NoiseBackend,
              where: str) -> StoredModel:
    """A model's parts from stored metadata, calibration features, response
    tensors and a backend; the one-class model is refitted and checked
    against the saved threshold."""
    check_finite_numbers({"pixel_threshold": meta.get("pixel_threshold"),
                          "response_statistics": meta.get("response_statistics"),
                          "calibration features": np.asarray(calibration_features),
                          "conformal features": None if conformal is None else np.asarray(conformal.features)},
                         where)
    try:
        config = RadarConfig.from_dict(meta["config"])
        if not config.inference.resolved:
            raise ValueError("its inference.response, scales and image_score must be chosen (not auto)")
        response = restore_response(config, meta.get("response_statistics"), response_tensors)
        width = len(response.feature_names)
        if np.ndim(calibration_features) != 2 or np.shape(calibration_features)[1] != width:
            raise ValueError(f"the calibration features have shape {np.shape(calibration_features)}; the "
                             f"{config.inference.response} response makes {width} per image")
        decision = ImageDecision(config.decision, config.seed, response.one_class_model).fit(
            np.asarray(calibration_features, dtype=np.float64), None if conformal is None else conformal.features)
        selection = meta.get("selection")
        if selection is not None and not isinstance(selection, dict):
            raise ValueError("selection must be an object or null")
        calibration = Calibration(response, decision, float(meta["pixel_threshold"]),
                                  {} if conformal is None else dict(conformal.info), selection)
        channels = int(meta["channels"])
    except (ConfigError, DataError, KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"cannot load model from {where}: {first_line(exc)}") from None
    saved = meta.get("model_threshold", meta.get("image_threshold"))
    if not np.isclose(decision.model_threshold_, np.nan if saved is None else saved):
        warnings.warn("the refitted one-class model's threshold differs from the saved one "
                      "(another scikit-learn version?)", stacklevel=3)
    return StoredModel(config, channels, meta.get("training", {}), calibration, network, backend)


def check_graph(backend: NoiseBackend, config: RadarConfig, channels: int, path: Path) -> None:
    """Run an exported file's graph once on the patch shape its metadata
    describes: a file whose graph and metadata disagree (edited, or glued
    together from two models) is refused on loading, not on the first image."""
    patch = config.patch_size
    try:
        levels = torch.arange(len(config.network.scales))
        output = backend.predict(torch.zeros(len(levels), channels, patch, patch),
                                 torch.zeros(len(levels), dtype=torch.int64), levels)
        ok = all(tuple(part.shape) == (len(levels), channels, patch, patch) and bool(torch.isfinite(part).all())
                 for part in (output.noise, output.repair))
    except Exception:  # the runtimes raise their own unexported types
        ok = False
    if not ok:
        raise ModelError(f"{path}: its graph does not match its metadata ({channels} channel(s), {patch} px "
                         "patches) or gives non-finite noise; export the model again")
