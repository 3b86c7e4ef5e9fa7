"""Write docs/reference/configuration.md, every setting of
:class:`radar_ad.config.RadarConfig`, from the config classes themselves.

One table per section (the top-level settings, then ``data``, ``network``,
``train``, ``inference`` and each response's own section, ``decision`` and
each one-class model's own section), one row per setting:

- **key**: the dotted name, as ``--set KEY=VALUE``, a JSON config file and
  ``config.updated({...})`` take it; **type**: the field's annotation;
  **default**: its default as JSON (what a config file holds);
- **allowed**: what the validator demands, in its own words: each section's
  ``validate()`` states its bounds as ``require(ok, "key", "allowed", ...)``
  (directly or through ``int_in``, ``optional_int_in``, ``_check_scales``)
  and registry names through ``REGISTRY.check(...)``. Every such call in the
  source of ``validate()`` is evaluated once, on the default config, with
  ``require`` replaced by a recorder and the checked value by a placeholder
  (so conditional and optional checks are stated too), and the recorded
  texts are joined per key. Bounds are thus never copied by hand;
- **description**: the field's own, given with
  :func:`radar_ad.settings.described` next to its default (each section's
  docstring opens its table). The script refuses to write a page while a
  setting has no description.

    python scripts/docs_config.py            # write the page
    python scripts/docs_config.py --check    # exit 1 if the committed page is stale
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

from docs_page import page_main

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "reference" / "configuration.md"
GENERATOR = "scripts/docs_config.py"

INTRO = """\
Every setting of a model, generated from `radar_ad.config`. A setting is named
by its dotted key everywhere:

- on the command line: `radar train DATA -o MODEL --set inference.stride=7 --set decision.false_alarm_rate=0.01`
  (the value is read as JSON, else taken as a string);
- in a JSON config file (`radar train --config FILE`) with any subset of the keys, nested by section:
  `{"train": {"steps": 500}, "inference": {"draws": 4}}`;
- in Python: `RadarConfig().updated({"train.steps": 500})`, or for a fitted model
  `radar.with_settings({"decision.false_alarm_rate": 0.01})`.

A plug-in's own settings sit under its name: `inference.responses.<response>.<key>`,
`decision.one_class_models.<model>.<key>`; the settings several plug-ins read stay in their section. The
keys these had before (`inference.segmentation_width` ..., `decision.n_estimators`) still work: in a config
file and in the `radar.json` of a model of format 4 they are read at their new places, and `--set` or
`updated` with an old key warns and sets the new one.

Unknown keys are an error, and so is a value outside "allowed" (checked when a config is built and when a
model's `radar.json` is loaded): one `radar: error:` line naming the setting and what it must be. Every number
has an upper bound far above real use, so that a mistyped or tampered value cannot hang the machine or exhaust
its memory.
"""


# ----------------------------------------------------------------- reading
def rest_to_markdown(text: str) -> str:
    """A reST docstring's inline markup as Markdown."""
    text = re.sub(r":[a-z]+:`~(?:[\w.]+\.)?(\w+)`", r"`\1`", text)
    text = re.sub(r":[a-z]+:`([^`]+)`", r"`\1`", text)
    return re.sub(r"``(.+?)``", r"`\1`", text)


def paragraphs(docstring: str | None) -> list[str]:
    """A docstring's paragraphs, each one line of Markdown."""
    text = inspect.cleandoc(docstring or "")
    return [rest_to_markdown(" ".join(line.strip() for line in block.splitlines()))
            for block in re.split(r"\n\s*\n", text) if block.strip()]


def sections() -> list[tuple[str, type, Any]]:
    """(section name, settings class, default instance): the top level
    first, then each nested section in the order RadarConfig declares it,
    each followed by its plug-ins' own sections."""
    from radar_ad.config import RadarConfig
    from radar_ad.settings import PluginSettings

    root = RadarConfig()
    found = [("", RadarConfig, root)]
    for item in dataclasses.fields(root):
        value = getattr(root, item.name)
        if dataclasses.is_dataclass(value):
            found.append((item.name, type(value), value))
            for part in dataclasses.fields(value):
                plugins = getattr(value, part.name)
                if isinstance(plugins, PluginSettings):
                    found += [(plugin.section, type(plugin), plugin) for plugin in plugins.values()]
    return found


def settings_of(section: str, instance: Any) -> list[tuple[str, Any]]:
    """(dotted key, dataclass field) of a section's own settings, in declared order."""
    from radar_ad.settings import PluginSettings

    prefix = f"{section}." if section else ""
    return [(prefix + item.name, item) for item in dataclasses.fields(instance)
            if not dataclasses.is_dataclass(getattr(instance, item.name))
            and not isinstance(getattr(instance, item.name), PluginSettings)]


class _Placeholder:
    """Stands for the value being checked: no check holds on it, and no
    ``is not None`` test skips the check."""

    def __repr__(self) -> str:
        return "<value>"


def _keys_of(name: str, section: str) -> list[str]:
    """The dotted keys a checked name covers (``network.beta_start/beta_end``: two)."""
    keys = []
    for part in name.split("/"):
        if "." not in part and section and not part.startswith(f"{section}."):
            part = f"{section}.{part}"
        keys.append(part)
    return keys


def constraints() -> dict[str, list[str]]:
    """key -> the texts its validator demands, in the order ``validate()``
    states them (see the module docstring)."""
    from radar_ad import settings as machinery
    from radar_ad.registry import Registry

    found: dict[str, list[str]] = {}
    recorded: list[tuple[str, str]] = []

    def record(ok: Any, name: str, allowed: str, value: Any) -> None:
        recorded.append((name, allowed))

    ordered = sections()
    modules = {machinery, *(sys.modules[cls.__module__] for _, cls, _ in ordered)}
    originals = {module: module.require for module in modules if hasattr(module, "require")}
    for module in originals:
        module.require = record  # type: ignore[attr-defined]
    try:
        for section, cls, instance in ordered[1:] + ordered[:1]:  # each section's own checks, then the cross-checks
            module = sys.modules[cls.__module__]
            helpers = {name for name, value in vars(module).items() if inspect.isfunction(value) and (
                name in ("require", "int_in", "optional_int_in") or (
                    value.__module__ == module.__name__ and name.startswith("_")))} | {"require"}
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls.validate)))
            function = tree.body[0]
            assert isinstance(function, ast.FunctionDef)
            scope: dict[str, Any] = {**vars(module), "self": instance}
            for statement in function.body:  # the locals the messages use (levels, factor ...)
                if isinstance(statement, ast.Assign):
                    exec(compile(ast.Module([statement], []), module.__file__, "exec"), scope)
            scope["__value__"] = _Placeholder()
            calls = sorted((node for node in ast.walk(function) if isinstance(node, ast.Call) and node.args),
                           key=lambda node: (node.lineno, node.col_offset))  # in source order
            for node in calls:
                func = node.func
                if isinstance(func, ast.Name) and func.id in helpers:
                    call = ast.Call(func, [ast.Name("__value__", ast.Load()), *node.args[1:]], node.keywords)
                    recorded.clear()
                    eval(compile(ast.fix_missing_locations(ast.Expression(call)), module.__file__, "eval"), scope)
                    for name, allowed in recorded:
                        for key in _keys_of(name, section):
                            found.setdefault(key, []).append(allowed)
                elif (isinstance(func, ast.Attribute) and func.attr == "check" and isinstance(func.value, ast.Name)
                      and isinstance(scope.get(func.value.id), Registry)):
                    registry = scope[func.value.id]
                    found.setdefault(registry.setting, []).append(registry.choices())
    finally:
        for module, original in originals.items():
            module.require = original  # type: ignore[attr-defined]
    return found


# --------------------------------------------------------------- rendering
def _cell(text: str) -> str:
    """Text for a Markdown table cell: one line, a pipe outside code escaped."""
    parts = " ".join(text.split()).split("`")
    return "`".join(part if i % 2 else part.replace("|", "\\|") for i, part in enumerate(parts))


def _type(item: Any) -> str:
    kind = item.type if isinstance(item.type, str) else getattr(item.type, "__name__", str(item.type))
    return f"`{kind}`"


def render() -> str:
    """The page's Markdown, from the config as the code defines it now."""
    from radar_ad import config as module

    checks = constraints()
    fields = [(key, item) for section, _, instance in sections() for key, item in settings_of(section, instance)]
    keys = [key for key, _ in fields]
    missing = [key for key, item in fields if not item.metadata.get("doc")]
    if missing:
        raise SystemExit(f"{GENERATOR}: no description for {', '.join(missing)} (give the field one with "
                         "radar_ad.settings.described)")
    unknown = sorted(set(checks) - set(keys))
    if unknown:
        raise SystemExit(f"{GENERATOR}: a validator names no setting: {', '.join(unknown)}")

    lines = ["# Configuration", "",
             f"<!-- Generated by {GENERATOR} from radar_ad.config.RadarConfig; do not edit by hand. -->", "",
             INTRO]
    lines += [paragraph for paragraph in paragraphs(module.__doc__)[1:] for paragraph in (paragraph, "")]
    for section, cls, instance in sections():
        title = f"`{section}`" if section else "Top level"
        lines += [f"## {title}", ""]
        for paragraph in paragraphs(cls.__doc__):
            lines += [paragraph, ""]
        lines += ["| Key | Type | Default | Allowed | Description |", "|---|---|---|---|---|"]
        for key, item in settings_of(section, instance):
            default = json.dumps(getattr(instance, item.name))  # tuples as lists: JSON, as a config file has it
            allowed = checks.get(key) or (["true or false"] if isinstance(getattr(instance, item.name), bool)
                                          else [])
            lines.append(f"| `{key}` | {_type(item)} | `{default}` | {_cell('; '.join(allowed))} | "
                         f"{_cell(item.metadata['doc'])} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    return page_main(render, PAGE, GENERATOR, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
