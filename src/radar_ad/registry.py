"""Registries of the method's extension points: responses, one-class models
and inference backends.

A plug-in is one module that registers a class under a name::

    from radar_ad.registry import RESPONSES

    @RESPONSES.register("my_response")
    class MyResponse(Response): ...

placed in the registry's plug-in package (``radar_ad/responses/``,
``radar_ad/one_class/``, ``radar_ad/backends/``) or published by another
distribution under the entry-point group of the same name
(``radar_ad.responses`` ...), the entry point named like the plug-in. The
registry imports its plug-ins the first time a name is looked up, so the
core never imports one by name, and the names a config accepts and the CLI
offers are exactly the registered ones.

:meth:`Registry.declared` lists the plug-ins without importing them (the
command line's help must not wait for PyTorch): it reads the plug-in
modules' source for ``@REGISTRY.register("name")`` and the literal class
attributes beside it, and takes third-party plug-ins' names from their
entry points.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")
LITERALS = (str, int, float, bool, tuple, type(None))  # what declared() reports of a class's attributes


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

    def __init__(self, kind: str, setting: str, *, symbol: str, plugins: str, modules: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.setting = setting
        self.symbol = symbol  # the registry's name in this module, as plug-ins write it in their decorator
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

    def _sources(self) -> list[Path]:
        """The files of the core modules and the plug-in package's modules, found without importing them."""
        files = []
        for module in self.modules:
            spec = importlib.util.find_spec(module)
            if spec is not None and spec.origin:
                files.append(Path(spec.origin))
        spec = importlib.util.find_spec(self.plugins)
        if spec is not None and spec.submodule_search_locations:
            for info in pkgutil.iter_modules(spec.submodule_search_locations):
                folder = Path(getattr(info.module_finder, "path", ""))
                found = folder / f"{info.name}.py"
                if not info.ispkg and found.is_file():
                    files.append(found)
        return files

    def declared(self) -> dict[str, dict[str, Any]]:
        """Name -> the literal class attributes its class declares, for every
        plug-in, without importing one: read from the source of the core
        modules and the plug-in package (``@REGISTRY.register("name")`` on a
        class), and from the entry-point group (names only). Once the
        plug-ins are imported, the registered classes answer instead."""
        if self._discovered:
            return {name: {key: value for key, value in vars(entry).items()
                           if not key.startswith("_") and isinstance(value, LITERALS)}
                    for name, entry in self.items()}
        found: dict[str, dict[str, Any]] = {}
        for path in self._sources():
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                if isinstance(node, ast.ClassDef):
                    for name in self._registered_as(node):
                        found[name] = _literal_attributes(node)
        for point in entry_points(group=self.plugins):
            found.setdefault(point.name, {})
        return dict(sorted(found.items()))

    def _registered_as(self, node: ast.ClassDef) -> list[str]:
        names = []
        for decorator in node.decorator_list:
            if (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)
                    and decorator.func.attr == "register" and isinstance(decorator.func.value, ast.Name)
                    and decorator.func.value.id == self.symbol and decorator.args
                    and isinstance(decorator.args[0], ast.Constant) and isinstance(decorator.args[0].value, str)):
                names.append(decorator.args[0].value)
        return names

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


def _literal_attributes(node: ast.ClassDef) -> dict[str, Any]:
    """The class body's ``name = <literal>`` assignments."""
    found = {}
    for statement in node.body:
        target, value = None, None
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target, value = statement.targets[0], statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            target, value = statement.target, statement.value
        if isinstance(target, ast.Name) and value is not None:
            try:
                found[target.id] = ast.literal_eval(value)
            except ValueError:
                continue
    return found


# The three extension points. The entry types are the protocols in
# response.py, decision.py and backend.py (typed loosely here so that this
# module imports nothing of the pipeline: config.py validates names through it).
RESPONSES: Registry[Any] = Registry("response", "inference.response", symbol="RESPONSES",
                                    plugins="radar_ad.responses")
ONE_CLASS_MODELS: Registry[Any] = Registry("one-class model", "decision.one_class_model", symbol="ONE_CLASS_MODELS",
                                           plugins="radar_ad.one_class")
BACKENDS: Registry[Any] = Registry("backend", "backend", symbol="BACKENDS", plugins="radar_ad.backends",
                                   modules=("radar_ad.backend",))
