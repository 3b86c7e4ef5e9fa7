"""The pool behind ``radar serve --workers N``: a supervisor (the parent
process) and the worker processes it spawns on one listening socket, each
with its own model copy (the package docstring, :mod:`radar_ad.apps.serve`,
describes the behaviour). The supervisor learns over a pipe when a
worker's model is loaded or could not be, and shares the number of loaded
workers with them all, so that every worker's ``/ready`` speaks for the pool.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnContext, SpawnProcess
from types import FrameType
from typing import Any

import uvicorn

from ...errors import ModelError, RadarError, first_line
from .app import GRACEFUL_SECONDS, ServedModel, create_app, model_identity, uvicorn_server
from .metrics import mark_dead, use_pool_folder
from .monitoring import DEFAULT_RECENT


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to load and serve its copy of the model
    (it reaches the worker pickled, as an argument of the spawned process):
    ``state`` and ``recent`` as :func:`~radar_ad.apps.serve.app.create_app`'s,
    ``metrics_folder`` the pool's metrics (None without prometheus-client)."""

    model_dir: str
    backend: str | None
    device: str | None
    settings: dict[str, Any] | None
    limits: dict[str, Any]
    workers: int
    parent_pid: int
    state: str | None = None
    recent: int = DEFAULT_RECENT
    metrics_folder: str | None = None


@dataclass
class Worker:
    """One worker process seen from the parent: ``reports`` carries its
    ``("ready", pid)`` or ``("failed", message)``."""

    process: SpawnProcess
    reports: Connection
    ready: bool = False
    failure: str | None = None

    @classmethod
    def start(cls, context: SpawnContext, spec: WorkerSpec, sock: socket.socket, workers_ready: Any) -> Worker:
        reports, report_end = context.Pipe(duplex=False)
        process = context.Process(target=_worker_main, args=(spec, sock, report_end, workers_ready),
                                  name="radar-serve-worker",
                                  daemon=True)  # daemon: multiprocessing ends it even if the parent fails
        # Ignored SIGINT is inherited through exec: a Ctrl-C while the worker
        # imports is the parent's to handle (it stops the worker with SIGTERM).
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            process.start()
        finally:
            signal.signal(signal.SIGINT, interrupt)
            report_end.close()
        return cls(process, reports)

    def read_reports(self) -> None:
        """Take in what the worker reported (none, or the end: it exited)."""
        with suppress(EOFError, OSError):
            while not self.reports.closed and self.reports.poll():
                kind, detail = self.reports.recv()
                if kind == "ready":
                    self.ready = True
                elif kind == "failed":
                    self.failure = str(detail)
        if not self.reports.closed and self.process.exitcode is not None:
            self.reports.close()

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()  # SIGTERM: uvicorn finishes the open requests


class Supervisor:
    """The parent of ``workers`` worker processes on one socket: starts them,
    replaces one that dies after loading, stops the service when one cannot
    load its model, and stops them all on SIGINT or SIGTERM. It keeps
    ``workers_ready`` (shared with the workers, for their ``/ready``) at the
    number of living workers whose model is loaded."""

    def __init__(self, spec: WorkerSpec, sock: socket.socket) -> None:
        self.spec = spec
        self.sock = sock
        self.context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch threads
        self.workers: list[Worker] = []
        self.signals: list[int] = []
        self.workers_ready = self.context.RawValue("i", 0)  # written here only

    def run(self) -> None:
        """Supervise until a signal (then return) or a worker that cannot
        load its model (then raise :class:`ModelError`)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for _ in range(self.spec.workers):
                self.workers.append(Worker.start(self.context, self.spec, self.sock, self.workers_ready))
            while not self.signals:
                self._watch(timeout=0.5)
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)  # acted on by the loop; a second one kills at once

    def _watch(self, timeout: float) -> None:
        waitables: list[Any] = [worker.process.sentinel for worker in self.workers]
        waitables += [worker.reports for worker in self.workers if not worker.reports.closed]
        wait(waitables, timeout)
        for worker in self.workers:
            worker.read_reports()
        # counted before any replacement starts: a dead worker's /ready no longer counts
        self.workers_ready.value = sum(worker.ready and worker.process.exitcode is None for worker in self.workers)
        for index, worker in enumerate(self.workers):
            pid = worker.process.pid
            if worker.failure is not None:
                raise ModelError(f"worker {pid} could not load the model: {worker.failure}")
            if worker.process.exitcode is None or self.signals:
                continue
            if not worker.ready:  # it would fail again: stop rather than restart in a loop
                raise ModelError(f"worker {pid} exited (code {worker.process.exitcode}) before its model "
                                 "was loaded")
            warnings.warn(f"worker {pid} exited (code {worker.process.exitcode}); starting another",
                          RuntimeWarning, stacklevel=2)
            mark_dead(self.spec.metrics_folder, pid)
            self.workers[index] = Worker.start(self.context, self.spec, self.sock, self.workers_ready)

    def _stop_all(self) -> None:
        """SIGTERM to every worker, up to ``GRACEFUL_SECONDS`` (and a margin)
        for them to finish, then SIGKILL; a second signal kills at once."""
        for worker in self.workers:
            worker.stop()
        deadline = time.monotonic() + GRACEFUL_SECONDS + 5
        for worker in self.workers:
            while worker.process.is_alive() and time.monotonic() < deadline and len(self.signals) < 2:
                worker.process.join(0.1)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.reports.close()


def _worker_main(spec: WorkerSpec, sock: socket.socket, reports: Connection, workers_ready: Any) -> None:
    """One worker process: its share of the cores, then listen on the
    parent's socket at once and load the model on a thread; serve until
    SIGTERM (or SIGINT, or the parent is gone), then exit 0."""
    signal.signal(signal.SIGTERM, _exit_now)  # until uvicorn takes over: stop at once, quietly
    if spec.metrics_folder is not None:
        use_pool_folder(spec.metrics_folder)  # before anything imports prometheus_client
    code = 0
    loader: threading.Thread | None = None
    try:
        from ...backend import threads_per_worker, use_threads

        use_threads(threads_per_worker(spec.workers))  # before the model: N workers share the cores
        app = create_app(None, **spec.limits, workers=spec.workers, state=spec.state, recent=spec.recent,
                         workers_ready=workers_ready, metrics_folder=spec.metrics_folder)
        server = uvicorn_server(app)
        loader = threading.Thread(target=_load_in_worker, args=(spec, app.state.model, server, reports),
                                  daemon=True, name="radar-load")
        loader.start()
        threading.Thread(target=_watch_parent, args=(spec.parent_pid, server), daemon=True,
                         name="radar-parent").start()
        server.run(sockets=[sock])  # on SIGTERM: finishes the open requests, then raises it again
    except SystemExit as exc:  # SIGTERM (0), or uvicorn that could not start (its code)
        code = exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        pass
    except BaseException:  # a bug: say where
        traceback.print_exc()
        code = 1
    if loader is not None and loader.is_alive():
        # Stopped while loading: the interpreter's teardown would end the
        # loading thread inside PyTorch's C++ code (an abort), so skip it.
        for stream in (sys.stdout, sys.stderr):
            with suppress(Exception):
                stream.flush()
        os._exit(code)
    sys.exit(code)


def _exit_now(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _load_in_worker(spec: WorkerSpec, served: ServedModel, server: uvicorn.Server, reports: Connection) -> None:
    """Load this worker's copy once its server listens; report ``ready``, or
    ``failed`` with the reason and stop the worker."""
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.01)
    started = time.perf_counter()
    try:
        from ...pipeline import Radar

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the parent loaded the same model and said its warnings once
            radar = Radar.load(spec.model_dir, device=spec.device, backend=spec.backend, settings=spec.settings)
        served.set(radar, model_identity(spec.model_dir), load_seconds=time.perf_counter() - started)
    except Exception as exc:
        reason = first_line(exc) if isinstance(exc, RadarError) else f"{type(exc).__name__}: {first_line(exc)}"
        _report(reports, ("failed", reason))
        server.should_exit = True
        return
    _report(reports, ("ready", os.getpid()))


def _report(reports: Connection, message: tuple[str, Any]) -> None:
    with suppress(OSError):  # the parent is gone: the parent watch stops this worker
        reports.send(message)


def _watch_parent(parent_pid: int, server: uvicorn.Server) -> None:
    """Stop this worker once its parent is gone (killed with SIGKILL, say):
    no orphan keeps serving the port."""
    while not server.should_exit:
        if os.getppid() != parent_pid:
            server.should_exit = True
            return
        time.sleep(0.5)
