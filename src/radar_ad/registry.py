"""Registries of the method's extension points: responses, one-class models
and inference backends.

A plug-in is one module that registers a class under a name::

    from radar_ad.registry import RESPONSES

    @RESPONSES.register("my_response")
    class MyResponse(Response): ...

placed in the registry's plug-in package (``radar_ad/responses/``,
``radar_ad/one_class/``, ``radar_ad/backends/``) or published by another
distribution under the entry-point group of the same name
(``radar_ad.responses`` ...). The registry imports its plug-ins the first
time a name is looked up, so the core never imports one by name, and the
names a config accepts and the CLI offers are exactly the registered ones.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def choices(names: Iterable[str]) -> str:
    """``"a"``, ``"one of a, b"``: the allowed values, for messages."""
    names = list(names)
    return names[0] if len(names) == 1 else "one of " + ", ".join(names)


class Registry(Generic[T]):
    """Name -> plug-in class, filled by the plug-ins themselves.

    ``setting`` is what the user sets to choose one (it names the setting in
    errors); ``modules`` are core modules that register entries of their own;
    ``plugins`` is the package whose every module is a plug-in (and the
    entry-point group third-party plug-ins use).
    """

    def __init__(self, kind: str, setting: str, *, plugins: str, modules: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.setting = setting
        self.plugins = plugins
        self.modules = modules
        self._entries: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: register the class under ``name`` (and set its
        ``name`` attribute)."""

        def add(entry: T) -> T:
            known = self._entries.get(name)
            if known is not None and known is not entry:
                raise ValueError(f"{self.kind} {name!r} is registered twice ({known} and {entry})")
            self._entries[name] = entry
            entry.name = name  # type: ignore[attr-defined]
            return entry

        return add

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        for module in self.modules:
            importlib.import_module(module)
        package = importlib.import_module(self.plugins)
        for info in pkgutil.iter_modules(package.__path__, prefix=f"{self.plugins}."):
            importlib.import_module(info.name)
        for point in entry_points(group=self.plugins):
            point.load()  # the plug-in registers itself on import

    def names(self) -> tuple[str, ...]:
        """The registered names, sorted."""
        self._discover()
        return tuple(sorted(self._entries))

    def choices(self) -> str:
        return choices(self.names())

    def check(self, name: Any, setting: str | None = None) -> str:
        """``name`` if registered, else a :class:`ConfigError` listing the
        registered names (no fallback: an unknown name never runs as another)."""
        if not isinstance(name, str) or name not in self.names():
            setting = setting or self.setting
            raise ConfigError(f"{setting} must be {self.choices()}, got {name!r}", setting=setting)
        return name

    def get(self, name: Any, setting: str | None = None) -> T:
        return self._entries[self.check(name, setting)]

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._entries[name]) for name in self.names()]


# The three extension points. The entry types are the protocols in
# response.py, decision.py and backend.py (typed loosely here so that this
# module imports nothing of the pipeline: config.py validates names through it).
RESPONSES: Registry[Any] = Registry("response", "inference.response", plugins="radar_ad.responses")
ONE_CLASS_MODELS: Registry[Any] = Registry("one-class model", "decision.one_class_model",
                                           plugins="radar_ad.one_class")
BACKENDS: Registry[Any] = Registry("backend", "backend", plugins="radar_ad.backends",
                                   modules=("radar_ad.backend",))
