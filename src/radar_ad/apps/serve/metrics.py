"""``GET /metrics`` of ``radar serve``: the service in Prometheus's text
format, through prometheus-client (the optional ``metrics`` extra; without
it ``/metrics`` answers 501 and everything else works).

Exported: ``radar_requests_total`` (answered requests by endpoint and HTTP
status), ``radar_request_duration_seconds`` (a latency histogram by
endpoint), ``radar_requests_in_flight`` (by endpoint), ``radar_verdicts_total``
(``normal``, ``anomalous``, or ``error``: an upload that got no verdict, not
counting the 503 of a busy or loading service, which asks to retry),
``radar_p_value`` (a histogram of the images' p-values) and the drift
monitor's ``radar_drift_martingale`` and ``radar_drift_alarm``.

A pool of workers (``radar serve --workers N``) uses prometheus-client's
multiprocess mode: the supervisor makes a private folder
(:func:`pool_metrics_folder`), each worker sets ``PROMETHEUS_MULTIPROC_DIR``
to it before prometheus-client is first imported (:func:`use_pool_folder`)
and keeps its counts there, and whichever worker is asked adds up every
worker's. The in-flight gauges count live workers only (a dead one is marked
so, :func:`mark_dead`); the drift gauges show the latest value any worker
saw when the pool shares one monitor (``--state``), else one per worker
(a ``pid`` label). A single process uses a registry of its own.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# The routes measured one by one; any other path counts as "other" (the label
# values stay few, whatever paths clients try).
ENDPOINTS = frozenset({"/", "/health", "/ready", "/model", "/predict", "/drift", "/recent", "/metrics"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
P_VALUE_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
MISSING = "GET /metrics needs prometheus-client (pip install 'radar-ad[metrics]')"
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# In the pool's metrics folder: the proof that the folder removed at exit is the one made for it.
POOL_MARKER = ".radar-ad-metrics"


class Metrics:
    """The service's Prometheus metrics. ``pool_folder``: the pool's
    multiprocess folder (prometheus-client must have been imported with
    ``PROMETHEUS_MULTIPROC_DIR`` set to it), None: this process's own
    registry. ``shared_drift``: whether the workers share one drift monitor."""

    def __init__(self, pool_folder: str | None = None, shared_drift: bool = False) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.pool_folder = pool_folder
        # In a pool the counts live in files, read at scrape time: nothing to register.
        self.registry = None if pool_folder else CollectorRegistry()
        registry = self.registry
        self.requests = Counter("radar_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=registry)
        self.duration = Histogram("radar_request_duration_seconds", "Time to answer a request, by endpoint",
                                  ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry)
        self.in_flight = Gauge("radar_requests_in_flight", "Requests being answered, by endpoint", ["endpoint"],
                               multiprocess_mode="livesum", registry=registry)
        self.verdicts = Counter("radar_verdicts", "Uploads by verdict (error: refused or failed, no verdict)",
                                ["verdict"], registry=registry)
        self.p_values = Histogram("radar_p_value", "The images' p-values (models with conformal images)",
                                  buckets=P_VALUE_BUCKETS, registry=registry)
        # one shared monitor: the latest value any worker saw; else one per worker (a pid label)
        shared = shared_drift or not pool_folder
        self.martingale = Gauge("radar_drift_martingale", "The drift monitor's test martingale (alarm at 4/(3 delta))",
                                multiprocess_mode="mostrecent" if shared else "all", registry=registry)
        self.alarm = Gauge("radar_drift_alarm", "1 once the drift monitor has raised its alarm, else 0",
                           multiprocess_mode="mostrecent" if shared else "all", registry=registry)

    @classmethod
    def create(cls, pool_folder: str | None = None, shared_drift: bool = False) -> Metrics | None:
        """The metrics, or None without prometheus-client."""
        try:
            return cls(pool_folder, shared_drift)
        except ImportError:
            return None

    def request_done(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.duration.labels(endpoint).observe(seconds)
        if endpoint == "/predict" and status not in (200, 503):
            self.verdicts.labels("error").inc()

    def prediction(self, verdict: str, p_value: float | None) -> None:
        self.verdicts.labels(verdict).inc()
        if p_value is not None:
            self.p_values.observe(p_value)

    def drift(self, martingale: float, alarm: bool) -> None:
        self.martingale.set(martingale)
        self.alarm.set(1.0 if alarm else 0.0)

    def exposition(self) -> tuple[bytes, str]:
        """The text a scrape gets, and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        registry = self.registry
        if registry is None:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.pool_folder)
        return generate_latest(registry), CONTENT_TYPE_LATEST


class RequestMetrics:
    """ASGI middleware: every request counted by endpoint and status, timed,
    and counted in flight while it is answered (an exception that escapes
    the app counts as the 500 the server answers)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status = 500

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        started = time.perf_counter()
        in_flight = self.metrics.in_flight.labels(endpoint)
        in_flight.inc()
        try:
            await self.app(scope, receive, sending)
        finally:
            in_flight.dec()
            self.metrics.request_done(endpoint, status, time.perf_counter() - started)


def use_pool_folder(folder: str) -> None:
    """Make this process keep its metrics in the pool's ``folder``: before
    prometheus-client is first imported, which reads the variable once."""
    os.environ[MULTIPROC_VARIABLE] = folder


@contextmanager
def pool_metrics_folder() -> Iterator[str | None]:
    """A fresh private folder for a pool's metrics, removed afterwards (None
    without prometheus-client: there is nothing to keep)."""
    if importlib.util.find_spec("prometheus_client") is None:
        yield None
        return
    folder = tempfile.mkdtemp(prefix="radar-metrics-")
    (Path(folder) / POOL_MARKER).touch()
    try:
        yield folder
    finally:
        # ours still: never a folder or a link someone put in its place
        if not Path(folder).is_symlink() and (Path(folder) / POOL_MARKER).is_file():
            shutil.rmtree(folder, ignore_errors=True)


def mark_dead(folder: str | None, pid: int | None) -> None:
    """Drop a dead worker's live gauges (its in-flight requests) from the pool's counts."""
    if folder is None or pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, folder)
