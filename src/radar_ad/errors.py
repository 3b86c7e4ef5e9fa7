"""Error types that the command line turns into one-line messages.

Every failure a user can cause (bad path, bad image, bad model directory, bad
setting) raises a subclass of :class:`RadarError`, so the CLI can print one
clear line and exit non-zero instead of a traceback. Messages speak the
library's terms (setting and argument names); the CLI maps a named argument
to its flag (``setting`` below).
"""

from __future__ import annotations

import importlib
from types import ModuleType


class RadarError(Exception):
    """Base class of every error the user can fix.

    ``setting`` names the argument or setting at fault (``"interval"``,
    ``"inference.stride"``), so a front end can say it in its own terms.
    """

    def __init__(self, message: str = "", *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it
    has none): what a one-line error report shows."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class DataError(RadarError):
    """An input path, folder or image that cannot be used."""


class ImageFileError(DataError):
    """An image file that cannot be decoded, with the why in parts that a
    front end may word its own way: ``kind`` is ``"too large"`` (more pixels
    than allowed; ``size``, ``(width, height)``, when the header was read),
    ``"not an image"`` (no known format), ``"unreadable"`` (its header) or
    ``"corrupt"`` (its data: truncated, say); ``reason``: the decoder's own
    words, one line."""

    def __init__(self, message: str, *, kind: str, reason: str = "", size: tuple[int, int] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.reason = reason
        self.size = size


class ConfigError(RadarError, ValueError):
    """A setting with a value outside what the method allows."""


class ModelError(RadarError):
    """A model directory that is missing, incomplete or of another format."""


class NotFittedError(RadarError):
    """A model used for prediction before ``fit`` or ``load``."""


class NotCalibratedError(NotFittedError, ConfigError):
    """A model whose calibration belongs to other settings: a setting that
    shapes the maps changed (``Radar.with_settings``) and ``calibrate`` has
    not run since."""


class NonFiniteError(RadarError):
    """A number that is not finite (NaN or infinite) where a verdict, a loss,
    a weight or a statistic must be: it never becomes a verdict."""


class PartialFailure(RadarError):
    """A batch that finished but in which some items failed (their rows say
    why): exit code 3 on the command line."""

    exit_code = 3


class Interrupted(RadarError):
    """Stopped by the user (Ctrl-C), with what was kept and how to go on:
    exit code 130 on the command line."""

    exit_code = 130


class MissingDependencyError(RadarError):
    """An optional feature whose extra packages are not installed."""


def require(module: str, extra: str, purpose: str, package: str | None = None) -> ModuleType:
    """Import an optional dependency, or say in one line which extra brings it:
    ``require("onnxruntime", "onnx", "the ONNX backend")``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"{purpose} needs {package or module.split('.')[0]}: "
                                     f"pip install 'radar-ad[{extra}]'") from None
