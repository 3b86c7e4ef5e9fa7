"""Atomic writes: a result or model is either complete or absent, never
half-written (written under a temporary name, then renamed into place)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
