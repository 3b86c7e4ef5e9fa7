"""Error types that the command line turns into one-line messages.

Every failure a user can cause (bad path, bad image, bad model directory, bad
setting) raises a subclass of :class:`RadarError`, so the CLI can print one
clear line and exit non-zero instead of a traceback.
"""

from __future__ import annotations


class RadarError(Exception):
    """Base class of every error the user can fix."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it
    has none): what a one-line error report shows."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class DataError(RadarError):
    """An input path, folder or image that cannot be used."""


class ConfigError(RadarError, ValueError):
    """A setting with a value outside what the method allows."""


class ModelError(RadarError):
    """A model directory that is missing, incomplete or of another format."""


class NotFittedError(RadarError):
    """A model used for prediction before ``fit`` or ``load``."""


class MissingDependencyError(RadarError):
    """An optional feature whose extra packages are not installed."""
