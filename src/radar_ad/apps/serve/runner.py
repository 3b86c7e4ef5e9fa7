"""``radar serve``'s runner: load the model, bind the socket, then serve it
from this process (:mod:`~radar_ad.apps.serve.app` on uvicorn) or from a pool
of worker processes (:mod:`~radar_ad.apps.serve.pool`), until SIGINT or
SIGTERM; and :func:`background_server`, the app on a thread for a ``with``
block."""

from __future__ import annotations

import gc
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from ...errors import ConfigError, first_line
from .app import DEFAULT_WORKERS, MAX_WORKERS_BOUND, create_app, model_identity, uvicorn_server
from .guards import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_MAX_UPLOADS,
    MAX_UPLOAD_BYTES_BOUND,
    check_int,
    check_limits,
)
from .metrics import pool_metrics_folder
from .monitoring import DEFAULT_RECENT, MAX_RECENT_BOUND, LineMonitor, state_folder
from .pool import Supervisor, WorkerSpec

PORT_BOUND = 65535


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, backend: str | None = None,
          device: str | None = None, max_upload_mb: float = DEFAULT_MAX_UPLOAD_BYTES / 2**20,
          max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, max_pixels: int = DEFAULT_MAX_PIXELS,
          body_timeout: float = DEFAULT_BODY_TIMEOUT, max_uploads: int = DEFAULT_MAX_UPLOADS,
          on_start: Callable[[str], None] | None = None, settings: dict[str, Any] | None = None,
          workers: int = DEFAULT_WORKERS, header_timeout: float = DEFAULT_HEADER_TIMEOUT,
          state: str | Path | None = None, recent: int = DEFAULT_RECENT) -> None:
    """Load the model (a bad model directory or setting fails here, before
    anything listens; ``settings`` as :meth:`Radar.load`'s), bind, call
    ``on_start(url)`` and serve until SIGINT (Ctrl-C) or SIGTERM, then return.

    ``workers`` > 1: that many processes on the one port, each with its own
    model copy, its share of the cores and its own limits (see the package
    docstring); call it from the main thread, which handles the signals.
    ``state``: the folder of the drift monitor and recent results, shared by
    the workers and kept across restarts."""
    check_int("port", port, 0, PORT_BOUND)
    check_int("workers", workers, 1, MAX_WORKERS_BOUND)
    check_int("recent", recent, 0, MAX_RECENT_BOUND)
    limits = check_limits(max_upload_bytes=_upload_bytes(max_upload_mb), max_pixels=max_pixels,
                          max_in_flight=max_in_flight, max_uploads=max_uploads, body_timeout=body_timeout,
                          header_timeout=header_timeout)
    state = state_folder(state)
    if workers > 1 and threading.current_thread() is not threading.main_thread():
        raise ConfigError("serving with several workers needs the main thread (it handles SIGINT and SIGTERM)",
                          setting="workers")
    from ...pipeline import Radar

    with _sigterm_as_interrupt():  # SIGTERM while the model loads: as Ctrl-C (KeyboardInterrupt)
        if workers == 1:  # one process, the model loaded before anything listens
            radar = Radar.load(model_dir, device=device, backend=backend, settings=settings)
            radar.warn_false_alarms()  # also in /model and on the page
            app = create_app(radar, **limits, model_info=model_identity(model_dir), state=state, recent=recent)
            _tell_note(app.state.line)
            with _listening(host, port, on_start) as sock, suppress(KeyboardInterrupt):
                # uvicorn finishes the open requests, then raises the signal again: KeyboardInterrupt
                uvicorn_server(app).run(sockets=[sock])
            return
        # The same load as each worker's, on the CPU: the parent only
        # supervises and should hold no GPU memory; a device a worker cannot
        # use is reported by that worker, in one line.
        checked = Radar.load(model_dir, device="cpu", backend=backend, settings=settings)
        checked.warn_false_alarms()  # once here, not once per worker
        if state is not None:  # a damaged state fails here, once; the workers find it checked
            line = LineMonitor(state=state, recent=recent, workers=workers, metrics=None)
            line.attach(checked)
            _tell_note(line)
            del line
        del checked
        gc.collect()
        with pool_metrics_folder() as metrics_folder:
            spec = WorkerSpec(model_dir=str(model_dir), backend=backend, device=device, settings=settings,
                              limits=limits, workers=workers, parent_pid=os.getpid(),
                              state=None if state is None else str(state), recent=recent,
                              metrics_folder=metrics_folder)
            with _listening(host, port, on_start) as sock:
                Supervisor(spec, sock).run()


def _tell_note(line: LineMonitor) -> None:
    """Say on stderr that a drift state of other conformal images was started afresh."""
    if line.drift is not None and line.drift.store is not None and line.drift.store.note:
        print(f"radar: note: {line.drift.store.note}", file=sys.stderr, flush=True)


@contextmanager
def _listening(host: str, port: int, on_start: Callable[[str], None] | None) -> Iterator[socket.socket]:
    """The bound socket, announced through ``on_start(url)``; closed after."""
    sock = bind_socket(host, port)
    try:
        if on_start is not None:
            on_start(socket_url(sock))
        yield sock
    finally:
        sock.close()


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the process as Ctrl-C does (KeyboardInterrupt), so that
    a service manager's stop is a clean stop too, and so that it stops at all
    as a container's PID 1, which ignores signals it has no handler for
    (signals: main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _upload_bytes(max_upload_mb: Any) -> int:
    """``--max-upload-mb`` in bytes, refused in one line when it is not a
    number of MiB in ``(0, 1024]`` (NaN included)."""
    bound = MAX_UPLOAD_BYTES_BOUND // 2**20
    if isinstance(max_upload_mb, bool) or not isinstance(max_upload_mb, (int, float)) \
            or not 0 < max_upload_mb <= bound:
        raise ConfigError(f"max_upload_mb must be > 0 and at most {bound} (MiB), got {max_upload_mb!r}",
                          setting="max_upload_mb")
    return max(1, int(max_upload_mb * 2**20))


# ------------------------------------------------------------------- sockets
def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket bound before the server starts, so a busy port is a
    one-line error and ``port=0`` picks a free port with no race."""
    check_int("port", port, 0, PORT_BOUND)  # the OS would take 99999 modulo 65536
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {first_line(exc)}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or first_line(exc)}") from None
    return sock


def socket_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


@contextmanager
def background_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` on a thread for the duration of a ``with`` block and yield
    its base URL (tests, benchmarks, notebooks)."""
    sock = bind_socket(host, port)
    server = uvicorn_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="radar-serve")
    thread.start()
    deadline = time.monotonic() + 30
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the radar server thread did not start")
            time.sleep(0.01)
        yield socket_url(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
