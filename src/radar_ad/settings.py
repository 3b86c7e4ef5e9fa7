"""Frozen, validated, JSON-round-trippable settings: the machinery behind
:mod:`radar_ad.config` and behind the settings a plug-in declares.

A section of settings is a dataclass made with :func:`settings`: frozen (an
assignment raises a :class:`~radar_ad.errors.ConfigError` naming the call to
use instead) and validated when built, by its ``validate()``, which states
each bound with :func:`require` (or :func:`int_in`, :func:`optional_int_in`)
so that the configuration reference can quote it. :func:`described` gives a
field its one-line description. A plug-in (a response, a one-class model)
names its own section class ``Settings``; :class:`PluginSettings` holds the
sections of every registered plug-in of a registry under their names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from .errors import ConfigError
from .registry import Registry

C = TypeVar("C")


def described(default: Any, doc: str) -> Any:
    """A settings field with its default and its one-line description (what
    the configuration reference prints)."""
    return field(default=default, metadata={"doc": doc})


def require(ok: bool, name: str, allowed: str, value: Any) -> None:
    """Unless ``ok``: a :class:`ConfigError` naming the setting, what it must be and what it got."""
    if not ok:
        raise ConfigError(f"{name} must be {allowed}, got {value!r}", setting=name)


def int_in(value: Any, low: int, high: int, name: str, note: str = "") -> None:
    """:func:`require` that ``value`` is an integer (not a bool) in [``low``, ``high``]."""
    require(isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
             name, f"an integer in [{low}, {high}]{note}", value)


def optional_int_in(value: Any, low: int, high: int, name: str, meaning: str) -> None:
    if value is not None:
        int_in(value, low, high, name, f" or null ({meaning})")


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    section = getattr(self, "section", "")
    key = f"{section}.{name}" if section else name
    raise ConfigError(f"settings are immutable: {key} cannot be assigned; use "
                      f"config.updated({{{key!r}: ...}}) for a new config, or "
                      f"radar.with_settings({{{key!r}: ...}}) and then radar.refit_calibration(images) "
                      "for a fitted model", setting=key)


def _frozen_delattr(self: Any, name: str) -> None:
    _frozen_setattr(self, name, None)


def _validate(self: Any) -> None:
    self.validate()


def settings(cls: type[C]) -> type[C]:
    """A frozen dataclass whose assignments raise a :class:`ConfigError` that
    names the call to use instead, and which validates itself when built."""
    cls.__post_init__ = _validate  # type: ignore[attr-defined]
    frozen = dataclass(frozen=True)(cls)
    frozen.__setattr__ = _frozen_setattr  # type: ignore[method-assign]
    frozen.__delattr__ = _frozen_delattr  # type: ignore[method-assign]
    return frozen


class PluginSettings(Mapping[str, Any]):
    """The settings of one registry's plug-ins (``inference.responses``,
    ``decision.one_class_models``): plug-in name -> its own settings, for
    every registered plug-in whose class names a settings class
    (``Settings``, made with :func:`settings`, its ``section`` the dotted
    prefix of its keys). Immutable and hashable like the rest of a config;
    a plug-in registered after the config was built reads its defaults."""

    __slots__ = ("_registry", "section", "_values")
    _registry: Registry[Any]
    section: str
    _values: dict[str, Any]

    def __init__(self, registry: Registry[Any], section: str, values: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_registry", registry)
        object.__setattr__(self, "section", section)
        object.__setattr__(self, "_values", dict(values or {}))

    __setattr__ = _frozen_setattr
    __delattr__ = _frozen_delattr

    def _classes(self) -> dict[str, type]:
        return {name: entry.Settings for name, entry in self._registry.items()
                if getattr(entry, "Settings", None) is not None}

    def of(self, plugin: Any) -> Any:
        """The settings of ``plugin`` (a registered plug-in class or
        instance): its section when its class names a ``Settings`` class,
        else None."""
        return self[plugin.name] if getattr(plugin, "Settings", None) is not None else None

    def __getitem__(self, name: str) -> Any:
        classes = self._classes()
        if name not in classes:
            raise KeyError(name)
        return self._values[name] if name in self._values else classes[name]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes())

    def __len__(self) -> int:
        return len(self._classes())

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, PluginSettings) and self.section == other.section
                and dict(self.items()) == dict(other.items()))

    def __hash__(self) -> int:
        return hash((self.section, tuple(self.items())))

    def __repr__(self) -> str:
        return f"PluginSettings({self.section!r}, {dict(self.items())!r})"

    def rebuilt(self, data: Any) -> PluginSettings:
        """These plug-ins' settings from a (possibly partial) dict of
        plug-in name -> its settings; a name that is no registered plug-in
        with settings is a :class:`ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError(f"{self.section} must be an object")
        classes = self._classes()
        values = {}
        for name, value in data.items():
            if name not in classes:
                raise ConfigError(f"unknown setting {self.section}.{name!s}: no registered {self._registry.kind} of "
                                  f"that name has settings (a plug-in not installed here?); known: "
                                  f"{', '.join(classes) or 'none'}", setting=f"{self.section}.{name!s}")
            if not isinstance(value, dict):
                raise ConfigError(f"{self.section}.{name} must be an object")
            values[name] = build(classes[name], value, f"{self.section}.{name}.")
        return PluginSettings(self._registry, self.section, values)


def as_dict(value: Any) -> Any:
    """A settings dataclass (or a config) as nested dicts, as JSON holds it."""
    if isinstance(value, PluginSettings):
        return {name: as_dict(plugin) for name, plugin in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_dict(getattr(value, f.name)) for f in fields(value)}
    return value


def build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """A ``cls`` settings section from a (possibly partial) dict, its keys
    named with ``prefix`` in errors; unknown keys and values of the wrong
    JSON type are a :class:`ConfigError`."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown setting {prefix + unknown[0]!r}; known: "
                          + ", ".join(prefix + k for k in known))
    kwargs: dict[str, Any] = {}
    defaults = cls()
    for name, value in data.items():
        current = getattr(defaults, name)
        if isinstance(current, PluginSettings):
            kwargs[name] = current.rebuilt(value)
        elif dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix + name} must be an object")
            kwargs[name] = build(type(current), value, f"{prefix}{name}.")
        elif isinstance(current, tuple) or (current is None and "tuple" in str(known[name].type)):
            if value is None and current is None:
                kwargs[name] = None
                continue
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{prefix + name} must be a list, got {value!r}")
            kwargs[name] = tuple(value)
        elif isinstance(current, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{prefix + name} must be true or false, got {value!r}")
            kwargs[name] = value
        elif isinstance(current, float) or (current is None and "float" in str(known[name].type)):
            if value is None and "None" in str(known[name].type):
                kwargs[name] = None
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{prefix + name} must be a number, got {value!r}")
            else:
                kwargs[name] = float(value)
        elif isinstance(current, int) or current is None:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{prefix + name} must be an integer, got {value!r}")
            kwargs[name] = value
        else:
            kwargs[name] = value
    return cls(**kwargs)


