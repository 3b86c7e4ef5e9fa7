"""Error types that the command line turns into one-line messages.

Every failure a user can cause (bad path, bad image, bad model directory, bad
setting) raises a subclass of :class:`RadarError`, so the CLI can print one
clear line and exit non-zero instead of a traceback.
"""

from __future__ import annotations


class RadarError(Exception):
    """Base class of every error the user can fix."""


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
