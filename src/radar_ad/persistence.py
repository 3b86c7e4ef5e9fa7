"""Model files: a model directory (``radar.json`` + safetensors, nothing that runs code)
written atomically and read back with every way it can be broken reported
as one :class:`ModelError` line.

This module moves bytes and checks formats; ``Radar.save``
(:mod:`radar_ad.pipeline`) decides what goes in, and :mod:`radar_ad.loading`
reads it back into a model.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from . import __version__
from .errors import DataError, ModelError, first_line
from .files import (
    TEMPORARY_MARKER,
    atomic_file,
    move_into_place,
    remove_temporary_dir,
    save_tensors,
    temporary_dir,
    unique_stem,
    usual_permissions,
)

FORMAT = "radar-ad"
FORMAT_VERSION = 5
# Version 5 keeps a response's learned tensors in their own file and the plug-ins'
# settings in their own sections; version 4 (a network of every pyramid level with
# a repair output) still loads. Versions 2 and 3 hold a one-level network: trained again.
READABLE_VERSIONS = (4, 5)
CONFIG_FILE = "radar.json"
WEIGHTS_FILE = "unet.safetensors"
CALIBRATION_FILE = "calibration.safetensors"
CALIBRATION_KEY = "calibration_features"
CONFORMAL_FILE = "conformal.safetensors"
CONFORMAL_KEY = "conformal_features"
RESPONSE_TENSORS_KEY = "response_tensors"  # in an exported file's metadata
RESPONSE_FILE = "response.safetensors"
CHECKPOINT_SUFFIX = ".checkpoint"
# radar.json holds settings, statistics and a training record: kilobytes. A larger one is not ours.
MAX_METADATA_BYTES = 16 * 2**20


@dataclass
class Conformal:
    """The conformal images' features and where they came from (``source``:
    "training split" or the folder ``radar calibrate-false-alarms`` read; ``created``: UTC)."""

    features: np.ndarray
    info: dict[str, str] = field(default_factory=dict)


# The files that are the model (older conformal backups are not), in the order they are hashed.
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE, CALIBRATION_FILE, CONFORMAL_FILE, RESPONSE_FILE)


def model_fingerprint(path: str | Path) -> str:
    """First 16 hex digits of the SHA-256 of the model's bytes: the file
    itself (an exported ``.onnx``), or a model directory's
    :data:`MODEL_FILES` that it holds, concatenated in order (``cat
    radar.json unet.safetensors calibration.safetensors
    conformal.safetensors response.safetensors | sha256sum``)."""
    path = Path(path)
    files = [path] if path.is_file() else [path / name for name in MODEL_FILES if (path / name).is_file()]
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as stream:
            while block := stream.read(2**20):
                digest.update(block)
    return digest.hexdigest()[:16]

def check_metadata(meta: Any, where: str) -> dict[str, Any]:
    """Refuse metadata of another format or an unknown format version;
    return it as the current version reads it (a model made before
    ``inference.map_sigmas`` keeps its one smoothing of the map)."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{where} is not a radar-ad model file")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ModelError(f"{where} has model format version {version!r}; "
                         f"this radar-ad ({__version__}) reads versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))}; train the model again with it")
    inference = meta.get("config", {}).get("inference") if isinstance(meta.get("config"), dict) else None
    if isinstance(inference, dict) and "map_sigmas" not in inference:
        # made before the map's several smoothings: it smooths once, by its map_sigma
        meta = {**meta, "config": {**meta["config"], "inference": {**inference, "map_sigmas": []}}}
    return meta


def check_model_target(path: Path) -> None:
    """Refuse to replace anything but an empty folder or a model directory,
    so a typo in an output path cannot wipe a user's data; and refuse, before
    any work, a location that cannot be written (a missing parent that cannot
    be made, a read-only or full folder)."""
    path = Path(os.path.abspath(path))  # "." has no name to write beside
    if path.exists():
        if not path.is_dir() or (any(path.iterdir()) and not (path / CONFIG_FILE).is_file()):
            raise DataError(f"{path} exists and is not a radar model directory; refusing to overwrite it")
        foreign = sorted(entry.name for entry in path.iterdir() if not _written_by_us(entry))
        if foreign:
            raise DataError(f"{path} holds files radar-ad did not write ({', '.join(foreign[:3])}"
                            f"{', ...' if len(foreign) > 3 else ''}); refusing to replace it: move them "
                            "or choose another --out")
    check_writable(path.parent, f"cannot write the model {path}")


def _written_by_us(entry: Path) -> bool:
    """Whether an entry of a model directory is one radar-ad writes there:
    one of :data:`MODEL_FILES`, or a conformal file that ``radar calibrate-false-alarms`` kept."""
    return entry.is_file() and not entry.is_symlink() and (
        entry.name in MODEL_FILES
        or re.fullmatch(r"conformal\.\d{8}T\d{6}Z(-\d+)?\.safetensors", entry.name) is not None)


def check_writable(folder: Path, what: str) -> None:
    """Make ``folder`` (and its parents) if needed and write, then remove, a
    small probe file in it; a :class:`DataError` saying ``what`` and why if
    that fails."""
    for parent in (folder, *folder.parents):
        if parent.exists() and not parent.is_dir():
            raise DataError(f"{what}: {parent} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".radar-ad-probe-")
        try:
            os.write(handle, b"radar-ad")
        finally:
            os.close(handle)
            os.unlink(probe)
    except OSError as exc:
        raise DataError(f"{what}: {exc.strerror or exc} ({exc.filename or folder})") from None


def checkpoint_dir(model_dir: Path) -> Path:
    """Where training keeps its checkpoint for ``model_dir``."""
    return model_dir.with_name(model_dir.name + CHECKPOINT_SUFFIX)


def _save_conformal(conformal: Conformal, path: Path) -> None:
    save_tensors({CONFORMAL_KEY: torch.from_numpy(np.ascontiguousarray(conformal.features, dtype=np.float64))},
                 path, metadata={"format": FORMAT, **conformal.info})


def write_model_dir(path: Path, metadata: dict[str, Any], weights: dict[str, torch.Tensor],
                    calibration_features: np.ndarray, conformal: Conformal,
                    response_tensors: dict[str, torch.Tensor]) -> Path:
    """Write a model directory atomically: built beside ``path`` under a
    temporary name, then renamed (an existing model directory is replaced)."""
    check_model_target(path)
    check_finite_weights(weights, str(path))
    check_finite_weights(response_tensors, str(path))
    tmp = temporary_dir(path)
    try:
        save_tensors(weights, tmp / WEIGHTS_FILE, metadata={"format": FORMAT})
        save_tensors(response_tensors, tmp / RESPONSE_FILE, metadata={"format": FORMAT})
        save_tensors({CALIBRATION_KEY: torch.from_numpy(np.ascontiguousarray(calibration_features))},
                     tmp / CALIBRATION_FILE)
        _save_conformal(conformal, tmp / CONFORMAL_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(metadata, indent=2))
        for file in tmp.iterdir():
            usual_permissions(file)  # safetensors writes its files owner-only; one mode for all
        if path.exists():  # a model directory of ours (check_model_target): moved aside, then removed
            old = temporary_dir(path)
            os.replace(path, old / "model")
            move_into_place(tmp, path)
            if all(_written_by_us(entry) for entry in (old / "model").iterdir()):
                remove_temporary_dir(old)
            else:  # a file appeared in it since the check: kept beside the model, never removed later
                (old / TEMPORARY_MARKER).unlink(missing_ok=True)
        else:
            move_into_place(tmp, path)
    except OSError as exc:  # a full disk, a file-size limit: the previous model stays as it was
        remove_temporary_dir(tmp)
        raise OSError(exc.errno, exc.strerror or first_line(exc), str(path)) from None
    except BaseException:
        remove_temporary_dir(tmp)
        raise
    return path


def replace_conformal(model_dir: Path, conformal: Conformal) -> Path | None:
    """Replace a model directory's conformal features, and nothing else,
    atomically; the previous file stays beside it as
    ``conformal.<UTC time>.safetensors``, whose path is returned (``None``
    when there was none)."""
    read_model_dir(model_dir)  # a whole, readable model, or a ModelError
    final = model_dir / CONFORMAL_FILE
    with atomic_file(final) as tmp:
        _save_conformal(conformal, tmp)
        backup = None
        if final.exists():
            stamp = unique_stem(time.strftime("conformal.%Y%m%dT%H%M%SZ", time.gmtime()),
                                lambda stem: (model_dir / f"{stem}.safetensors").exists())
            backup = model_dir / f"{stamp}.safetensors"
            # the old file under a second name before the rename replaces it
            try:
                os.link(final, backup)
            except OSError:
                shutil.copy2(final, backup)
    return backup


def read_conformal(path: Path) -> Conformal | None:
    """A model directory's conformal features, or ``None`` when its conformal file is missing."""
    file = path / CONFORMAL_FILE
    if not file.is_file():
        return None
    try:
        with safe_open(str(file), framework="pt") as handle:
            info = dict(handle.metadata() or {})
            features = handle.get_tensor(CONFORMAL_KEY).numpy()
    except (KeyError, OSError, SafetensorError) as exc:
        raise ModelError(f"cannot read {file}: {first_line(exc)}") from None
    info.pop("format", None)
    return Conformal(features, info)


@dataclass
class ModelDir:
    """A model directory's files, read and checked: ``radar.json``, the
    network's weights, the calibration features and the response's tensors
    (none for format 4); :func:`read_conformal` reads its conformal features."""

    metadata: dict[str, Any]
    weights: dict[str, torch.Tensor]
    calibration_features: np.ndarray
    response_tensors: dict[str, torch.Tensor]


def read_model_dir(path: Path) -> ModelDir:
    """The files of the model directory at ``path``, read and checked."""
    if not path.is_dir():
        raise ModelError(f"model not found: {path} (expected a model directory "
                         "from `radar train` or a model file from `radar export`)")
    meta_path = path / CONFIG_FILE
    if not meta_path.is_file():
        raise ModelError(f"{path} is not a radar model directory (no {CONFIG_FILE})")
    if meta_path.stat().st_size > MAX_METADATA_BYTES:
        raise ModelError(f"{meta_path} is {meta_path.stat().st_size} bytes, more than a model's description "
                         f"can be ({MAX_METADATA_BYTES}); not a radar-ad file")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {meta_path}: {exc}") from None
    meta = check_metadata(meta, str(meta_path))
    required = (WEIGHTS_FILE, CALIBRATION_FILE, CONFORMAL_FILE) + ((RESPONSE_FILE,) if meta["format_version"] >= 5
                                                                    else ())
    for name in required:
        if not (path / name).is_file():
            raise ModelError(f"model directory {path} is incomplete: {name} is missing")
    try:
        weights = load_file(str(path / WEIGHTS_FILE))
        calibration = load_file(str(path / CALIBRATION_FILE))[CALIBRATION_KEY].numpy()
        response = load_file(str(path / RESPONSE_FILE)) if meta["format_version"] >= 5 else {}
    except (KeyError, OSError, SafetensorError) as exc:
        raise ModelError(f"cannot load model from {path}: {first_line(exc)}") from None
    check_finite_weights(weights, str(path / WEIGHTS_FILE))
    check_finite_weights(response, str(path / RESPONSE_FILE))
    return ModelDir(meta, weights, calibration, response)


def tensors_to_text(tensors: dict[str, torch.Tensor]) -> str:
    """Named tensors as text (base64 of their safetensors bytes), for an
    exported file's metadata, which holds text only."""
    from safetensors.torch import save

    return base64.b64encode(save({k: v.contiguous() for k, v in tensors.items()})).decode("ascii")


def tensors_from_text(text: Any, where: str) -> dict[str, torch.Tensor]:
    """The tensors :func:`tensors_to_text` wrote; a :class:`ModelError` for anything else."""
    from safetensors.torch import load

    try:
        tensors = load(base64.b64decode(str(text), validate=True))
    except (ValueError, SafetensorError) as exc:
        raise ModelError(f"{where}: its response tensors cannot be read: {first_line(exc)}") from None
    check_finite_weights(tensors, where)
    return tensors


def check_finite_weights(weights: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights holding NaN or infinity: such a model scores every
    image NaN, and a non-finite number never becomes a verdict."""
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelError(f"{where}: weight {name} holds NaN or infinite values; the model is broken "
                             "(train it again)")


def check_finite_numbers(data: Any, where: str, path: str = "") -> None:
    """Refuse NaN or infinity anywhere in stored numbers (JSON statistics,
    thresholds, features)."""
    if isinstance(data, dict):
        for key, value in data.items():
            check_finite_numbers(value, where, f"{path}.{key}" if path else str(key))
    elif isinstance(data, (list, tuple)):
        for value in data:
            check_finite_numbers(value, where, path)
    elif isinstance(data, np.ndarray):
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            raise ModelError(f"{where}: {path or 'a stored array'} holds NaN or infinite values; "
                             "the model is broken (train it again)")
    elif isinstance(data, float) and not np.isfinite(data):
        raise ModelError(f"{where}: {path or 'a stored number'} is {data}; the model is broken (train it again)")
