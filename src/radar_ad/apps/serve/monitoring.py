"""What reached ``radar serve``: the drift monitor that every prediction
feeds, the last results the page shows, and the routes that tell them
(``GET /drift``, ``GET /recent``, ``GET /metrics``).

With a state folder (``radar serve --state DIR``) the whole pool of workers
shares one drift monitor (:class:`~radar_ad.drift.DriftStore`) and one list
of recent results (``recent.json``, rewritten atomically under its own
lock), and both outlive a restart. Without one, each process keeps its own
in memory, and ``/drift`` says so.

The recent results are bounded: at most ``limit`` of them (``--recent``), each
with a thumbnail of the overlay at most :data:`THUMBNAIL_PX` pixels on a side
(a JPEG of a few kilobytes), so their memory and file stay small whatever
the traffic. A result is its verdict, score, p-value, time and thumbnail:
anyone who may open the page sees the thumbnails of every client's images.
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import uuid
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool

from ...drift import DriftMonitor, DriftStatus, DriftStore
from ...errors import ConfigError, RadarError, first_line
from ...files import locked, write_json
from ...report import overlay
from .metrics import MISSING, Metrics
from .openapi import METRICS_RESPONSES, NEEDS_MODEL_RESPONSES, RECENT_RESPONSES

if TYPE_CHECKING:
    from ...outputs import Prediction

# Recent results kept for the page (each a few kB with its thumbnail).
DEFAULT_RECENT = 50
MAX_RECENT_BOUND = 500
THUMBNAIL_PX = 96
THUMBNAIL_QUALITY = 80
RECENT_FILE = "recent.json"
RECENT_LOCK = "recent.lock"
RECENT_FORMAT = 1
NO_CONFORMAL = ("the model has no conformal images, so no p-values to test (`radar calibrate-false-alarms MODEL "
                "NORMAL_DIR` adds them)")
LOADING = "the model is still loading"


def state_folder(state: str | Path | None) -> Path | None:
    """``--state``: the folder, made if missing; refused in one line when it
    cannot be."""
    if state is None:
        return None
    folder = Path(state)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"state must be a folder the service can write, got {str(state)!r} "
                          f"({exc.strerror or first_line(exc)})", setting="state") from None
    return folder


class ServiceDrift:
    """The drift monitor of the served model: in ``state`` and shared by the
    processes using it, or in this process's memory (``state`` None).
    Thread-safe; a state that cannot be updated any more (a full disk, a
    damaged file) is reported by :meth:`describe`, never by the prediction
    that fed it."""

    def __init__(self, monitor: DriftMonitor, state: Path | None, workers: int) -> None:
        self.monitor = monitor
        self.state = state
        self.store = DriftStore(state, monitor) if state is not None else None
        self.error = ""
        self._lock = threading.Lock()
        if self.store is not None:
            self.note = self.store.note
        elif workers > 1:
            self.note = (f"each of the {workers} worker processes keeps its own drift monitor in memory, fed by "
                         "the images it answered, and starts afresh at a restart; `radar serve --state DIR` "
                         "keeps one monitor for the pool")
        else:
            self.note = ("this process keeps the drift monitor in memory: it starts afresh at a restart; "
                         "`radar serve --state DIR` keeps it")

    def observe(self, score: float) -> DriftStatus | None:
        with self._lock:
            try:
                if self.store is not None:
                    return self.store.observe([score])
                self.monitor.update(score)
                return self.monitor.status()
            except (RadarError, OSError) as exc:
                self.error = f"the drift state could not be updated: {first_line(exc)}"
                return None

    def status(self) -> DriftStatus | None:
        with self._lock:
            try:
                return self.store.status() if self.store is not None else self.monitor.status()
            except (RadarError, OSError) as exc:
                self.error = f"the drift state could not be read: {first_line(exc)}"
                return None

    def describe(self) -> dict[str, Any]:
        """``GET /drift``: the status (:meth:`DriftStatus.to_dict`), whether
        the pool shares it, the state folder's name (not its path: the
        service does not tell where its files lie) and a note."""
        status = self.status()
        where = {"shared": self.store is not None, "state": None if self.state is None else self.state.resolve().name,
                 "note": self.note}
        if status is None:
            return {"available": False, "reason": self.error, **where}
        return {"available": True, **status.to_dict(), **where, "summary": status.describe(),
                **({"error": self.error} if self.error else {})}

    def summary(self, status: DriftStatus | None = None) -> dict[str, Any]:
        """The few fields ``GET /model`` and ``GET /recent`` show."""
        status = status or self.status()
        if status is None:
            return {"available": False, "reason": self.error}
        full = status.to_dict()
        keys = ("drift", "martingale", "alarm_level", "images_seen", "images_tested", "images_flagged")
        return {"available": True, **{key: full[key] for key in keys if key in full},
                "shared": self.store is not None, "summary": status.describe()}


class RecentResults:
    """The last ``limit`` results (0: none kept), newest last, each with an
    ``id`` that grows by one per result of its ``stream`` (a new stream: the
    list started afresh, and a client's earlier ids mean nothing). A shared
    list that cannot be written (a full disk) is said in ``error``, never by
    the prediction that made the result."""

    def __init__(self, limit: int, state: Path | None) -> None:
        self.limit = limit
        self.path = None if state is None else state / RECENT_FILE
        self._lock = threading.Lock()
        self._memory: deque[dict[str, Any]] = deque(maxlen=max(limit, 1))
        self._stream = uuid.uuid4().hex[:12]
        self._next_id = 1
        self._cache: tuple[tuple[int, int, int], dict[str, Any]] | None = None
        self.error = ""

    def add(self, result: dict[str, Any]) -> None:
        if self.limit == 0:
            return
        with self._lock:
            if self.path is None:
                self._memory.append({"id": self._next_id, **result})
                self._next_id += 1
                return
            try:
                with locked(self.path.parent / RECENT_LOCK):
                    record = self._read(cached=False) or self._fresh()
                    kept = [*record["results"], {"id": record["next_id"], **result}][-self.limit:]
                    write_json(self.path, {**record, "next_id": record["next_id"] + 1, "results": kept})
                self.error = ""
            except OSError as exc:
                self.error = f"the recent results could not be saved: {exc.strerror or first_line(exc)}"

    def results(self) -> tuple[str, list[dict[str, Any]]]:
        """The stream and its kept results, oldest first."""
        with self._lock:
            if self.path is None:
                return self._stream, list(self._memory)
            record = self._read() or self._fresh()
            return record["stream"], record["results"][-self.limit:] if self.limit else []

    def _fresh(self) -> dict[str, Any]:
        return {"format": RECENT_FORMAT, "stream": self._stream, "next_id": 1, "results": []}

    def _read(self, cached: bool = True) -> dict[str, Any] | None:
        """The shared list, or None when there is none or it is not ours:
        then it starts afresh. ``cached``: parsed again only when the file
        looks changed (for showing it; a writer reads it afresh, so that no
        other process's result is lost)."""
        assert self.path is not None
        try:
            info = os.stat(self.path)
            key = (info.st_ino, info.st_mtime_ns, info.st_size)
            if cached and self._cache is not None and self._cache[0] == key:
                return self._cache[1]
            record = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("format") != RECENT_FORMAT \
                or not isinstance(record.get("results"), list) or not isinstance(record.get("next_id"), int) \
                or not isinstance(record.get("stream"), str):
            return None
        self._cache = (key, record)
        return record


def thumbnail(prediction: Prediction) -> str:
    """The overlay at most :data:`THUMBNAIL_PX` on a side, as a JPEG data
    URI. A large image is subsampled before the overlay is drawn, so this
    costs little whatever the image's size."""
    height, width = prediction.anomaly_map.shape
    step = max(1, max(height, width) // (2 * THUMBNAIL_PX))
    vmax = 2 * prediction.pixel_threshold
    anomaly_map = prediction.anomaly_map[::step, ::step]
    anomaly_map = np.where(np.isfinite(anomaly_map), anomaly_map, vmax)  # a broken pixel shows at full heat
    small = overlay(prediction.image[:, ::step, ::step], anomaly_map, prediction.mask[::step, ::step], vmax)
    picture = Image.fromarray(small)
    picture.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))  # never enlarges
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class LineMonitor:
    """What the service saw of the line: the drift monitor (once the model is
    there, :meth:`attach`), the recent results and the metrics (None without
    prometheus-client)."""

    def __init__(self, *, state: Path | None, recent: int, workers: int, metrics: Metrics | None) -> None:
        self.state = state
        self.workers = workers
        self.metrics = metrics
        self.recent = RecentResults(recent, state)
        self.drift: ServiceDrift | None = None
        self.reason = LOADING  # why there is no drift monitor

    def attach(self, radar: Any) -> None:
        """Start the drift monitor of the model now served (a shared one
        catches up with the state folder)."""
        monitor = radar.drift_monitor() if hasattr(radar, "drift_monitor") else None
        if monitor is None:
            self.reason = NO_CONFORMAL
            return
        self.drift = ServiceDrift(monitor, self.state, self.workers)

    def record(self, prediction: Prediction, answer: dict[str, Any]) -> None:
        """Take in one prediction and its JSON answer (on a worker thread:
        the shared state is files)."""
        status = self.drift.observe(prediction.score) if self.drift is not None else None
        if self.metrics is not None:
            self.metrics.prediction(answer["verdict"], answer["p_value"])
            if status is not None:
                self.metrics.drift(status.martingale, status.alarm)
        if self.recent.limit:
            keys = ("verdict", "score", "p_value", "threshold", "width", "height", "mask_fraction", "milliseconds")
            self.recent.add({"time": datetime.now().astimezone().isoformat(timespec="milliseconds"),
                             **{key: answer.get(key) for key in keys}, "worker": os.getpid(),
                             "thumbnail": thumbnail(prediction)})

    def drift_summary(self) -> dict[str, Any]:
        if self.drift is None:
            return {"available": False, "reason": self.reason}
        return self.drift.summary()

    def recent_json(self, after: int) -> dict[str, Any]:
        """``GET /recent``: the results after id ``after`` (all of them for a
        client that has another stream), newest first, with the verdicts of
        every kept result and the drift summary."""
        stream, kept = self.recent.results()
        anomalous = sum(result["verdict"] == "anomalous" for result in kept)
        alone = self.state is None and self.workers > 1
        return {"limit": self.recent.limit, "stream": stream, "latest": kept[-1]["id"] if kept else 0,
                "shared": self.state is not None,
                "note": (f"the results of the worker that answered: each of the {self.workers} workers keeps its "
                         "own (`radar serve --state DIR` shares them)") if alone else "",
                "window": {"images": len(kept), "anomalous": anomalous,
                           "anomaly_rate": anomalous / len(kept) if kept else None},
                "results": [result for result in reversed(kept) if result["id"] > after],
                "drift": self.drift_summary(), **({"error": self.recent.error} if self.recent.error else {})}


def add_line_routes(app: FastAPI, line: LineMonitor, loading: Callable[[], Exception]) -> None:
    """``GET /drift``, ``GET /recent`` and ``GET /metrics`` (``loading``: the
    answer while the model is not there yet)."""

    @app.get("/drift", responses=NEEDS_MODEL_RESPONSES)
    async def drift() -> JSONResponse:
        """The drift monitor: whether the images judged normal still look
        like the model's conformal images (``drift`` turns true, for good
        until a reset, once the test martingale reaches ``alarm_level``),
        whether the pool shares it (``--state``), and a note.
        ``{"available": false, "reason": ...}`` for a model without conformal
        images."""
        if line.drift is None:
            if line.reason == LOADING:
                raise loading()
            return JSONResponse({"available": False, "reason": line.reason})
        return JSONResponse(await run_in_threadpool(line.drift.describe))

    @app.get("/recent", responses=RECENT_RESPONSES)
    async def recent(after: int = Query(0, description="Only the results with a larger id (those already "
                                                        "shown by a client that polls).")) -> JSONResponse:
        """The last results of every client's predictions, newest first (each
        with its verdict, p-value, time and a small overlay thumbnail), the
        anomaly rate over the kept ones, and the drift summary: what the page
        polls. Ids grow by one per result of a ``stream``; a new stream means
        the list started afresh."""
        return JSONResponse(await run_in_threadpool(line.recent_json, after))

    @app.get("/metrics", response_class=PlainTextResponse, responses=METRICS_RESPONSES)
    async def metrics() -> Response:
        """The service in Prometheus's text format: requests by endpoint and
        status, latency, requests in flight, verdicts, p-values and the drift
        martingale, added up over every worker. 501 without prometheus-client."""
        if line.metrics is None:
            return JSONResponse({"error": MISSING}, status_code=501)
        if line.drift is not None:  # the shared monitor as it stands now, whoever fed it last
            status = await run_in_threadpool(line.drift.status)
            if status is not None:
                line.metrics.drift(status.martingale, status.alarm)
        data, kind = await run_in_threadpool(line.metrics.exposition)
        return Response(data, media_type=kind)
