"""The ``radar`` command line: a thin layer over the Python API.

This module is the app and its entry point; the verbs live in
:mod:`radar_ad.apps.commands`, one module per kind of job. Every
user-fixable failure surfaces as one ``radar: error: ...`` line on stderr
and exit code 2; nothing half-written is left behind. The library's errors
name the argument at fault in the library's terms; :func:`main` says it as
this command's flag (``maps_for`` -> ``--maps-for``).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import typer

from .. import __version__
from ..errors import RadarError, first_line
from .commands import detect, measure, model, service
from .commands.common import INVOCATION

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="RADAR: one-step diffusion anomaly detection and segmentation.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"radar-ad {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """RADAR: reconstruction-free anomaly detection with diffusion models."""


def _deprecated_verb(old: str, new: str, command: Callable[..., Any]) -> None:
    """``radar OLD``, hidden: one warning line on stderr, then ``radar NEW``
    with the same arguments."""

    @functools.wraps(command)
    def alias(*args: Any, **kwargs: Any) -> Any:
        typer.echo(f"radar: warning: `radar {old}` is deprecated; use `radar {new}`", err=True)
        return command(*args, **kwargs)

    app.command(old, hidden=True, help=f"Deprecated: use `radar {new}`.")(alias)


# the verbs, in the order the help lists them
app.command()(model.train)
app.command("calibrate-false-alarms")(model.calibrate_false_alarms)
app.command()(service.drift)
app.command()(detect.detect)
app.command()(measure.evaluate)
app.command()(model.export)
app.command()(measure.demo)
app.command("make-data")(measure.make_data)
app.command()(service.serve)
app.command()(service.watch)
app.command()(measure.benchmark)
# the old spellings, kept for one release
_deprecated_verb("calibrate", "calibrate-false-alarms", model.calibrate_false_alarms)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    typer.echo(f"radar: warning: {str(message).strip().splitlines()[0]}", err=True)


def _in_flags(exc: RadarError, argv: list[str]) -> str:
    """The error's message with the argument it names said as the invoked
    command's flag, when it has one (``maps_for`` -> ``--maps-for``)."""
    message = str(exc)
    if not exc.setting or not argv:
        return message
    # typer may carry its own copy of click: look at the commands' shapes, not their types
    sub = getattr(typer.main.get_command(app), "commands", {}).get(str(argv[0]))
    for param in getattr(sub, "params", ()):
        if getattr(param, "param_type_name", "") == "option" and param.name in (exc.setting, exc.setting + "_"):
            flag = max(param.opts, key=len)
            return message.replace(exc.setting, flag, 1) if message.startswith(exc.setting) else message
    return message


def _click_errors() -> tuple[type[Exception], ...]:
    """The usage-error base classes of the click that typer runs on (typer's
    own copy, or the click package)."""
    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(importlib.import_module(module).ClickException)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


_USAGE_ERRORS = _click_errors()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning every failure into one line and an
    exit code with one meaning each (README "Errors"): 0 done; 2 a usage,
    configuration, input or file-system error; 3 a batch finished but some
    items failed; 130 interrupted; 1 only for a bug."""
    args = list(sys.argv[1:] if argv is None else argv)
    INVOCATION[:] = args
    warnings.showwarning = _show_warning
    try:
        result = app(args=args, prog_name="radar", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except RadarError as exc:
        typer.echo(f"radar: error: {_in_flags(exc, args)}", err=True)
        return int(getattr(exc, "exit_code", 2))
    except typer.Exit as exc:
        return int(getattr(exc, "exit_code", 0))
    except SystemExit as exc:  # shell completion (--show-completion, _RADAR_COMPLETE) exits on its own
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("radar: interrupted", err=True)
        return 130
    except _USAGE_ERRORS as exc:  # a typo in a command or an option, a missing argument
        context = getattr(exc, "ctx", None)
        command = context.command_path if context is not None else "radar"
        message = str(getattr(exc, "format_message", exc.__str__)()).strip()
        if message:  # (none when the help was asked for by giving no arguments, and shown)
            typer.echo(f"radar: error: {message.splitlines()[0]} (see `{command} --help`)", err=True)
        return 2
    except OSError as exc:  # the file system said no: a full disk, a file-size limit, no permission
        where = f": {exc.filename}" if exc.filename else ""
        typer.echo(f"radar: error: {exc.strerror or first_line(exc)}{where}", err=True)
        return 2
    except Exception as exc:  # a bug, not bad input: still one line, with a way to see more
        if os.environ.get("RADAR_DEBUG"):
            raise
        typer.echo(f"radar: internal error: {type(exc).__name__}: {first_line(exc)} "
                   "(set RADAR_DEBUG=1 for a traceback)", err=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
