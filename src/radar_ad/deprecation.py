"""The old spellings of renamed public names: each use warns with
:class:`DeprecationWarning`, naming the new spelling, and does what the new
one does. An old spelling is kept for one release after its rename."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new``; ``stacklevel``
    3 points at the caller of the function that warns."""
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=stacklevel)


def module_getattr(module: str, moved: dict[str, str] | None = None,
                   renamed: dict[str, tuple[str, str]] | None = None) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) for ``module``: each name in
    ``moved`` (name -> the module that defines it) loads from there on first
    use, without a warning; each old name in ``renamed`` (old name -> (the
    module, the new name)) warns and gives the new name's object."""
    moved, renamed = moved or {}, renamed or {}

    def __getattr__(name: str) -> Any:
        if name in moved:
            return getattr(importlib.import_module(moved[name]), name)
        if name in renamed:
            home, new = renamed[name]
            warn_renamed(f"{module}.{name}", f"{home}.{new}")
            return getattr(importlib.import_module(home), new)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
