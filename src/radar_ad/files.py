"""Writing files: atomically (a result or model is either complete or absent,
never half-written: written under a temporary name, then renamed into
place), as strict JSON, and under names that do not collide."""

from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import json
import math
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .errors import first_line


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def usual_permissions(path: Path) -> None:
    """Give a temporary file or folder the permissions a plain ``open`` or
    ``mkdir`` would have (``mkstemp``/``mkdtemp`` make them owner-only)."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())


# In every folder temporary_dir makes: the proof, besides the name, that a
# stale temporary folder is ours to remove.
TEMPORARY_MARKER = ".radar-ad-temporary"


def _owner() -> str:
    """This process, as temporary names carry it: a short digest of the host
    name, and the process id."""
    return f"{hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]}-{os.getpid()}"


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}.tmp-"


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporaries that a radar-ad process killed while writing
    ``path`` left beside it (its name, our prefix, this host, a process that
    no longer runs); a live writer's and anything else are left alone.
    Returns what was removed."""
    prefix, host = _temporary_prefix(path), _owner().split("-")[0]
    removed: list[Path] = []
    try:
        siblings = list(path.parent.glob(glob.escape(prefix) + "*"))
    except OSError:
        return removed
    for sibling in siblings:
        tag = sibling.name[len(prefix):].split("-")
        if len(tag) < 3 or tag[0] != host or not tag[1].isdigit() or _alive(int(tag[1])):
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            if not remove_temporary_dir(sibling):
                continue  # our name, but not our marker: not ours to remove
        else:
            sibling.unlink(missing_ok=True)
        removed.append(sibling)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, and belongs to someone else
        return True
    return True


def temporary_dir(path: Path) -> Path:
    """A new sibling folder of ``path`` to build it in, holding only
    :data:`TEMPORARY_MARKER`; :func:`move_into_place` renames it to ``path``
    (stale ones of killed runs are removed first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{_temporary_prefix(path)}{_owner()}-"))
    usual_permissions(tmp)
    (tmp / TEMPORARY_MARKER).touch()
    return tmp


def remove_temporary_dir(folder: Path) -> bool:
    """Remove a folder :func:`temporary_dir` made, and nothing else: only
    one that holds :data:`TEMPORARY_MARKER` (and is no link) is removed.
    Returns whether it was."""
    if folder.is_symlink() or not (folder / TEMPORARY_MARKER).is_file():
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True


def move_into_place(tmp: Path, path: Path) -> None:
    """Rename a :func:`temporary_dir` to ``path`` (which must not exist),
    without its marker."""
    (tmp / TEMPORARY_MARKER).unlink(missing_ok=True)
    os.replace(tmp, path)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces
    ``path``, on any error it is removed (a kill leaves it, and the next
    write of ``path`` removes it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{_temporary_prefix(path)}{_owner()}-")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        usual_permissions(tmp)  # after the write: some writers (safetensors) recreate the file owner-only
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a file-size limit: said of the file the user asked for
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror or first_line(exc), str(path)) from None
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


def save_tensors(tensors: dict[str, Any], path: Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file``, with a failed write (a full disk, a
    file-size limit) reported as the :class:`OSError` it is, naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as exc:
        raise OSError(errno.EIO, _os_reason(str(exc)), str(path)) from None


def _os_reason(message: str) -> str:
    """``"File too large"`` out of ``"Error while serializing: I/O error: File too large (os error 27)"``."""
    match = re.search(r"I/O error: (.*?)(?: \(os error \d+\))?$", message.strip().splitlines()[0])
    return match.group(1) if match else message.strip().splitlines()[0]


@contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (made if missing): one
    process, and one thread, at a time in the block."""
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
