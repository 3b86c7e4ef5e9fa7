"""Writing files: atomically (a result or model is either complete or absent,
never half-written: written under a temporary name, then renamed into
place), as strict JSON, and under names that do not collide."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def usual_permissions(path: Path) -> None:
    """Give a temporary file or folder the permissions a plain ``open`` or
    ``mkdir`` would have (``mkstemp``/``mkdtemp`` make them owner-only)."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())


def temporary_dir(path: Path) -> Path:
    """A new, empty sibling folder of ``path`` to build it in before a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    usual_permissions(tmp)
    return tmp


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces
    ``path``, on any error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    usual_permissions(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def unique_stem(stem: str, taken: Callable[[str], bool]) -> str:
    """``stem``, or ``stem-2``, ``stem-3`` ... : the first name ``taken``
    says is free (output files of two inputs with the same name never
    overwrite each other)."""
    name, n = stem, 1
    while taken(name):
        n += 1
        name = f"{stem}-{n}"
    return name


def json_ready(data: Any) -> Any:
    """``data`` with numpy scalars and arrays as Python values, paths as
    strings, and NaN/inf as None (JSON null), so it serialises as strict JSON."""
    if isinstance(data, dict):
        return {str(k): json_ready(v) for k, v in data.items()}
    if isinstance(data, (list, tuple, np.ndarray)):
        return [json_ready(v) for v in data]
    if isinstance(data, (float, np.floating)):
        return float(data) if math.isfinite(float(data)) else None
    if isinstance(data, (np.integer, np.bool_)):
        return data.item()
    if isinstance(data, Path):
        return str(data)
    return data


def write_json(path: str | Path, data: Any) -> None:
    """Strict JSON (NaN as null), indented, written atomically."""
    write_text(path, json.dumps(json_ready(data), indent=2, allow_nan=False))
