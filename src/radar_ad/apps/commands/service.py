"""The verbs that run a model on a line: ``radar serve`` (HTTP),
``radar watch`` (a folder) and ``radar drift`` (the drift monitor either
keeps in a folder)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ...errors import require
from .common import BACKEND_HELP, DEVICE_HELP, FALSE_ALARM_HELP, NON_FINITE_HELP, decision_settings


def drift(
    state_dir: Path = typer.Argument(..., help="A `radar watch` output folder or a `radar serve --state` folder."),
    reset: bool = typer.Option(False, "--reset", help="Start the monitor afresh (after recalibrating, or once "
                               "the change is understood)."),
    as_json: bool = typer.Option(False, "--json", help="Print the state as JSON."),
) -> None:
    """Show (or reset) the drift monitor kept in a folder: whether normal
    images still look like the model's conformal ones."""
    from ...drift import DriftStatus, read_state, reset_state

    record = reset_state(state_dir) if reset else read_state(state_dir)
    if as_json:
        typer.echo(json.dumps(record, indent=2))
        return
    status = DriftStatus.from_record(record)
    typer.echo(f"{state_dir}: {'reset; ' if reset else ''}{status.describe()}")


def serve(
    model_dir: Path = typer.Argument(..., help="Model directory from `radar train`, or an .onnx file."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, help="Port to listen on, 0 to 65535 (0: any free port)."),
    backend: Optional[str] = typer.Option(None, help=BACKEND_HELP),
    device: Optional[str] = typer.Option(None, help=DEVICE_HELP),
    max_upload_mb: float = typer.Option(20.0, help="Largest accepted upload, in MiB (at most 1024)."),
    max_in_flight: int = typer.Option(8, help="Requests admitted at once (running + waiting) per worker; more "
                                      "get 503 (at most 1024)."),
    max_pixels: int = typer.Option(
        16_000_000, help="Largest accepted image, in pixels (width x height; at most 100000000). A request's "
        "memory and time grow with its pixels (the HTTP API reference gives what the default costs); lower it "
        "for a quick answer, raise it on a bigger machine."),
    body_timeout: float = typer.Option(
        20.0, help="Seconds a client has to send its whole upload, else 408 (at most 600); the upload is "
        "received before the request is admitted, so slow clients hold no slot."),
    max_uploads: int = typer.Option(32, help="Uploads received at once, before admission; more get 503. "
                                    "Bounds their memory to about this x 2 x --max-upload-mb (at most 4096)."),
    false_alarm_rate: Optional[float] = typer.Option(None, help=FALSE_ALARM_HELP),
    non_finite: Optional[str] = typer.Option(None, help=NON_FINITE_HELP.replace("an error row", "HTTP 422")),
    workers: int = typer.Option(
        1, help="Worker processes on the one port (1 to 64), each with its own copy of the model and an equal "
        "share of the CPU cores. Every limit above applies per worker (N workers admit N x --max-in-flight "
        "requests and may use N times the memory); GET /ready says when every worker's model is loaded."),
    header_timeout: float = typer.Option(
        10.0, help="Seconds a client has to send a request's headers, else its connection is closed (at most "
        "600): a client trickling its headers holds a connection no longer."),
    state: Optional[Path] = typer.Option(
        None, help="Folder for the drift monitor and the recent results, shared by every worker and kept "
        "across restarts (`radar drift DIR` reads it). Without it each worker keeps its own in memory."),
    recent: int = typer.Option(50, help="Recent results GET /recent and the page keep, each with a small "
                               "thumbnail of its overlay (0 to 500; 0: none)."),
) -> None:
    """Serve a model over HTTP: POST /predict, GET /model, GET /health, GET /ready, GET /drift, GET /recent,
    GET /metrics and a web page at /."""
    for module in ("fastapi", "uvicorn", "multipart"):
        require(module, "serve", "`radar serve`", "python-multipart" if module == "multipart" else None)
    from contextlib import suppress

    from ..serve import serve as run_server

    def announce(url: str) -> None:
        several = f"{workers} workers; " if workers > 1 else ""
        typer.echo(f"serving {model_dir} at {url} ({several}Ctrl+C to stop)")

    # It returns once stopped by Ctrl-C or SIGTERM; a Ctrl-C while the model loads raises.
    with suppress(KeyboardInterrupt):
        run_server(model_dir, host=host, port=port, backend=backend, device=device, max_upload_mb=max_upload_mb,
                   max_in_flight=max_in_flight, max_pixels=max_pixels, body_timeout=body_timeout,
                   max_uploads=max_uploads, on_start=announce,
                   settings=decision_settings(false_alarm_rate, non_finite), workers=workers,
                   header_timeout=header_timeout, state=state, recent=recent)
    typer.echo("stopped")


def watch(
    model_dir: Path = typer.Argument(..., help="Model directory from `radar train`, or an .onnx file."),
    input_dir: Path = typer.Argument(..., help="Folder to watch for new images."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for results.csv and maps."),
    interval: float = typer.Option(0.5, help="Seconds between looks at the folder."),
    settle: float = typer.Option(0.5, help="Seconds a file must stay unchanged before it is read."),
    retries: int = typer.Option(5, help="Further tries at an unreadable file before an error row."),
    existing: bool = typer.Option(True, "--existing/--no-existing",
                                  help="Also inspect images already in the folder at start."),
    maps_for: str = typer.Option("anomalous", help="Write map PNGs for: all, anomalous or none."),
    false_alarm_rate: Optional[float] = typer.Option(None, help=FALSE_ALARM_HELP),
    non_finite: Optional[str] = typer.Option(None, help=NON_FINITE_HELP),
    backend: Optional[str] = typer.Option(None, help=BACKEND_HELP),
    device: Optional[str] = typer.Option(None, help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No line per image."),
) -> None:
    """Inspect each new image as it lands in a folder, until Ctrl-C."""
    from ..watch import watch_folder

    summary = watch_folder(model_dir, input_dir, out, interval=interval, settle=settle, retries=retries,
                           existing=existing, maps_for=maps_for, quiet=quiet, backend=backend, device=device,
                           settings=decision_settings(false_alarm_rate, non_finite))
    typer.echo(str(summary))
