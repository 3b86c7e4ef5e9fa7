"""``radar serve``: a fitted model behind HTTP, for inspection stations and
people with a browser.

``POST /predict`` takes one image (a multipart ``file`` field or a raw
``image/*`` body) and answers the verdict, score and, with ``?maps=1``, the
anomaly map, mask and overlay as base64 PNGs. ``GET /model`` describes the
model, ``GET /health`` answers while the process is up, and ``GET /`` is a
small offline web page over the same API.

Uploads are untrusted, so every way one can be unusable is a 4xx JSON answer
``{"error": "..."}`` decided before any expensive work: the size is bounded
while the body streams in, the pixel count is read from the image header
before anything is decoded, and the model's own checks (an image smaller than
a patch) surface as 422 with their message, a non-finite score included
(:class:`~radar_ad.errors.NonFiniteError`). The model uses every CPU core per
call, so calls are serialised by a lock; a bounded number of requests is
admitted at once (running plus waiting) and the rest get 503 with
``Retry-After`` at once instead of queueing without end.

Bodies are received *before* a request is admitted, so a slow uploader holds
no admission slot: each body must arrive whole within ``body_timeout`` seconds
(else 408 and the connection is closed), and at most ``max_uploads`` bodies
are received at once (more get 503). Memory for bodies being received is thus
at most about ``max_uploads x 2 x max_upload_bytes`` (a raw body is joined
from its chunks; defaults: 32 x 2 x 20 MiB = 1.25 GiB, reached only when 32
clients upload 20 MiB files at once), plus ``max_in_flight x max_upload_bytes``
for the admitted requests' bytes; a connection whose body is not being read
holds only the server's read buffer (uvicorn pauses reading it at 64 KiB).

``DEFAULT_MAX_PIXELS`` is sized from a measurement (issue 12; the default
grayscale architecture on the CPU, VmHWM of the `radar serve` process, one
request with ``maps=1``): inference streams in bounded tiles, so a request
costs a constant plus a few bytes per pixel: +474 MB at 2000 x 2000 and
+1.14 GB at 4000 x 4000 over the loaded service (upload, decoding, the
prediction, three PNG maps and their base64). Model calls are serialised, so
one inference's working memory exists at a time; even if all
``DEFAULT_MAX_IN_FLIGHT`` = 8 requests of 16 megapixels held their peak at
once, that is about 9 GiB, within a 16 GiB machine. Time, not memory, is what
a large image costs now: about 4 s per megapixel on 2 CPU cores (67 s for
4000 x 4000), so a service that must answer quickly lowers ``--max-pixels``;
a bigger machine may raise it up to ``MAX_PIXELS_BOUND``.

A client has ``header_timeout`` seconds to send a request's headers, then
its connection is closed (:mod:`radar_ad.apps.header_deadline`): a client
trickling its headers holds a connection for no longer than that.

``GET /health`` is liveness (200 while the process is up, even while its
model loads); ``GET /ready`` is readiness: 503 ``{"ready": false}`` until this
process's model is loaded, then 200 with its pid, thread count and model
fingerprint; in a pool of workers, 503 until every worker's model is loaded
(with how many of them are). ``POST /predict`` and ``GET /model`` answer 503
with ``Retry-After`` until then.

Every prediction feeds the model's drift monitor and the list of recent
results (:mod:`radar_ad.apps.monitoring`: ``GET /drift``, ``GET /recent``,
the page's view of the line; kept in ``state`` and shared by the pool when
given) and the Prometheus metrics (:mod:`radar_ad.apps.metrics`: ``GET
/metrics``).

Several workers (:func:`radar_ad.apps.runner.serve` with ``workers=N``,
``radar serve --workers N``): the parent checks the model (on the CPU, so that it holds no GPU memory while it
only supervises), binds one socket and starts N worker processes
(``multiprocessing`` spawn) that each run their own uvicorn server on that
socket: the kernel hands each new connection to one of them. Each worker
takes its share of the cores (:func:`radar_ad.backend.threads_per_worker`),
listens at once and loads its own copy of the model on a thread, so ``/ready``
is meaningful. Every limit above applies per worker: N workers admit N x
``max_in_flight`` requests and may use N times the memory. A worker that
dies after loading is replaced; one that cannot load its model stops the
service with one line (it would fail again). SIGINT or SIGTERM stops every
worker (SIGTERM, each finishing its requests for up to ``GRACEFUL_SECONDS``,
then SIGKILL), and a worker whose parent is gone stops itself: no orphan
keeps the port. The parent supervises the workers itself rather than
through uvicorn's ``workers=N`` (:mod:`radar_ad.apps.pool`): the settings
reach the workers as arguments (no app import string or environment
variables; the one temporary folder is the pool's metrics, removed at exit),
a worker that cannot load its model stops the service instead of being
restarted in a loop, and a Ctrl-C while a worker is still starting prints no
traceback.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..errors import ConfigError, RadarError, first_line
from ..report import png_base64, prediction_maps
from .header_deadline import header_deadline_protocol
from .metrics import Metrics, RequestMetrics
from .monitoring import LineMonitor, add_line_routes, state_folder

DEFAULT_MAX_UPLOAD_BYTES = 20 * 2**20
# 4000 x 4000: ~1.1 GB per request at its peak (measured), so 8 requests fit
# in 16 GiB even at once (see the module docstring).
DEFAULT_MAX_PIXELS = 16_000_000
DEFAULT_MAX_IN_FLIGHT = 8
# Bodies received at once (before admission): larger than DEFAULT_MAX_IN_FLIGHT
# so that uploading overlaps with inference, bounded so that memory is.
DEFAULT_MAX_UPLOADS = 32
# Seconds a client has to send its whole body.
DEFAULT_BODY_TIMEOUT = 20.0
# Upper bounds of the settings: far above any sensible value, low enough that a
# typo cannot make the service accept what exhausts the machine.
MAX_UPLOAD_BYTES_BOUND = 2**30
MAX_PIXELS_BOUND = 100_000_000
MAX_IN_FLIGHT_BOUND = 1024
MAX_UPLOADS_BOUND = 4096
BODY_TIMEOUT_BOUND = 600.0
PORT_BOUND = 65535
# Seconds a client has to send a request's headers (a slowloris is cut off).
DEFAULT_HEADER_TIMEOUT = 10.0
HEADER_TIMEOUT_BOUND = 600.0
# Recent results kept for the page (each a few kB with its thumbnail).
DEFAULT_RECENT = 50
MAX_RECENT_BOUND = 500
# Worker processes of one service: one is today's single process; 64 covers a
# large machine, each worker holding its own model copy.
DEFAULT_WORKERS = 1
MAX_WORKERS_BOUND = 64
# Seconds a stopping server has to finish the requests it is answering.
GRACEFUL_SECONDS = 10
# What a client is told to wait while the model loads (a small model: seconds).
LOADING_RETRY_AFTER = 2
# Decoders offered to untrusted bytes: the common lossless and camera formats,
# nothing exotic (PIL would otherwise try every plugin it has).
PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF")
IMAGE_TYPES = frozenset({
    "image/png", "image/jpeg", "image/jpg", "image/pjpeg", "image/bmp", "image/x-bmp", "image/x-ms-bmp",
    "image/tiff", "image/webp", "image/gif",
})
# A multipart part whose client did not know the type (a file without a known
# extension) is taken on trust and identified from its bytes.
UNTYPED_PARTS = frozenset({"", "application/octet-stream"})
# Room for the multipart boundaries and part headers around the file itself.
MULTIPART_OVERHEAD = 64 * 2**10
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


def create_app(radar: Any, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
               max_uploads: int = DEFAULT_MAX_UPLOADS, body_timeout: float = DEFAULT_BODY_TIMEOUT,
               header_timeout: float = DEFAULT_HEADER_TIMEOUT, model_info: dict[str, Any] | None = None,
               workers: int = 1, state: str | Path | None = None, recent: int = DEFAULT_RECENT,
               workers_ready: Any = None, metrics_folder: str | None = None) -> FastAPI:
    """The HTTP service around a fitted :class:`radar_ad.Radar` (or anything
    with its ``predict`` and learned attributes, e.g. an exported backend).

    ``radar=None``: a service that listens before its model is there (a
    worker loading its copy): ``/ready``, ``/model`` and ``/predict`` answer
    503 until ``app.state.model.set(radar)``. ``workers``: how many processes
    serve the same port (``/ready`` says it); ``workers_ready``: in a pool,
    the shared integer (``multiprocessing.Value``) the supervisor keeps at
    the number of workers whose model is loaded; ``metrics_folder``: the
    pool's metrics folder (:mod:`radar_ad.apps.metrics`). ``state``: the
    folder of the drift monitor and recent results shared by every process
    that uses it (None: kept in memory); ``recent``: how many results
    ``/recent`` keeps."""
    limits = check_limits(max_upload_bytes=max_upload_bytes, max_pixels=max_pixels, max_in_flight=max_in_flight,
                          max_uploads=max_uploads, body_timeout=body_timeout, header_timeout=header_timeout)
    check_int("workers", workers, 1, MAX_WORKERS_BOUND)
    check_int("recent", recent, 0, MAX_RECENT_BOUND)
    metrics = Metrics.create(metrics_folder, shared_drift=state is not None)
    line = LineMonitor(state=state_folder(state), recent=recent, workers=workers, metrics=metrics)
    served = ServedModel(limits, workers, line, workers_ready)
    if radar is not None:
        served.set(radar, model_info)
    page = resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")
    admission = Admission(max_in_flight)
    uploads = Uploads(max_uploads, body_timeout)

    app = FastAPI(title="radar-ad", version=__version__, docs_url=None, redoc_url=None)  # both pull assets from a CDN
    app.state.model = served
    app.state.admission = admission  # observable by monitoring and tests
    app.state.uploads = uploads
    app.state.line = line
    _add_error_handlers(app)
    if metrics is not None:
        app.add_middleware(RequestMetrics, metrics=metrics)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        body = served.readiness()
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get("/model")
    async def model() -> dict[str, Any]:
        if served.metadata is None:
            raise _loading()
        return {**served.metadata, "drift": await run_in_threadpool(line.drift_summary)}

    @app.post("/predict")
    async def predict(request: Request, maps: bool = False) -> JSONResponse:
        """Score one uploaded image; ``maps=1`` adds the maps as base64 PNGs.
        The body is received before admission: a slow client holds no slot."""
        started = time.perf_counter()
        radar = served.radar
        if radar is None:  # refused before the body is read: a loading worker costs nobody an upload
            raise _loading()
        data = await uploads.receive(request, max_upload_bytes)
        if not admission.try_enter():
            return JSONResponse(
                {"error": f"busy: {max_in_flight} requests already in flight; retry later"},
                status_code=503, headers={"Retry-After": str(admission.retry_after())})
        try:
            image = open_image(data, max_pixels)
            async with admission.model_lock:
                model_started = time.perf_counter()
                prediction = await run_in_threadpool(_decode_and_predict, radar, image)
                admission.record(time.perf_counter() - model_started)
            body = await run_in_threadpool(_prediction_json, prediction, maps)
            body["milliseconds"] = round((time.perf_counter() - started) * 1000, 1)
            await run_in_threadpool(line.record, prediction, body)  # drift, recent results, metrics
            return JSONResponse(body)
        finally:
            admission.leave()

    add_line_routes(app, line, _loading)
    return app


class ServedModel:
    """The model one process serves, once it is there: a worker of
    ``radar serve --workers N`` listens first and loads its copy afterwards,
    so that ``/health`` answers during the load and ``/ready`` says when this
    process can predict."""

    def __init__(self, limits: dict[str, Any], workers: int = 1, line: LineMonitor | None = None,
                 workers_ready: Any = None) -> None:
        self.limits = limits
        self.workers = workers
        self.line = line
        self.workers_ready = workers_ready
        self.radar: Any = None
        self.metadata: dict[str, Any] | None = None
        self.model_info: dict[str, Any] = {}
        self.load_seconds: float | None = None

    def set(self, radar: Any, model_info: dict[str, Any] | None = None, load_seconds: float | None = None) -> None:
        """Serve ``radar`` from now on (``model_info``: its name and fingerprint)."""
        self.model_info = dict(model_info or {})
        self.load_seconds = load_seconds
        self.metadata = {**model_metadata(radar), "limits": self.limits, **self.model_info}
        if self.line is not None:
            self.line.attach(radar)
        self.radar = radar  # last: whoever sees the model sees its metadata

    def readiness(self) -> dict[str, Any]:
        """``GET /ready``: ``{"ready": false}`` while this process's model
        loads; then which process answers (a pid among the workers), with how
        many CPU threads, and which model (so that a client can check that
        every worker serves the same one). In a pool, ready only once every
        worker's model is loaded (``workers_ready`` of ``workers``)."""
        pool: dict[str, Any] = {}
        if self.workers_ready is not None:
            loaded = min(int(self.workers_ready.value), self.workers)
            pool = {"workers": self.workers, "workers_ready": loaded}
            if loaded < self.workers:
                pool["reason"] = f"{loaded} of {self.workers} workers have loaded the model"
        if self.radar is None:
            return {"ready": False, **pool}
        import torch  # already loaded with the model

        return {"ready": "reason" not in pool, "worker": os.getpid(), "workers": self.workers,
                "threads": torch.get_num_threads(),
                "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 2),
                **{key: self.model_info[key] for key in ("model_name", "model_fingerprint") if key in self.model_info},
                **pool}


def _loading() -> HTTPException:
    # Connection: close, so a body the client is still sending is not read.
    return HTTPException(503, "the model is still loading; retry later",
                         headers={"Retry-After": str(LOADING_RETRY_AFTER), "Connection": "close"})


def check_limits(*, max_upload_bytes: int, max_pixels: int, max_in_flight: int, max_uploads: int,
                 body_timeout: float, header_timeout: float = DEFAULT_HEADER_TIMEOUT) -> dict[str, Any]:
    """The service's limits, each checked against its bounds (one line
    naming the first at fault)."""
    check_int("max_upload_bytes", max_upload_bytes, 1, MAX_UPLOAD_BYTES_BOUND)
    check_int("max_pixels", max_pixels, 1, MAX_PIXELS_BOUND)
    check_int("max_in_flight", max_in_flight, 1, MAX_IN_FLIGHT_BOUND)
    check_int("max_uploads", max_uploads, 1, MAX_UPLOADS_BOUND)
    check_seconds("body_timeout", body_timeout, BODY_TIMEOUT_BOUND)
    check_seconds("header_timeout", header_timeout, HEADER_TIMEOUT_BOUND)
    return {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels, "max_in_flight": max_in_flight,
            "max_uploads": max_uploads, "body_timeout": body_timeout, "header_timeout": header_timeout}


def check_int(name: str, value: Any, low: int, high: int) -> None:
    """Refuse a setting outside ``[low, high]`` in one line naming it (a
    bound above: a typo must not make the service accept what exhausts it)."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer from {low} to {high}, got {value!r}", setting=name)


def check_seconds(name: str, value: Any, high: float) -> None:
    """Refuse a duration that is not a number in ``(0, high]`` (NaN included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= high:
        raise ConfigError(f"{name} must be a number of seconds > 0 and at most {high:g}, got {value!r}",
                          setting=name)


class Admission:
    """Admits at most ``limit`` predict requests (waiting plus running) and
    serialises model calls: parallel calls of a model that already uses every
    core only thrash, and an unbounded queue only grows latency and memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self.model_lock = asyncio.Lock()
        self.mean_seconds = 1.0
        self._calls = 0

    def try_enter(self) -> bool:
        # Runs on the event loop with no await in between: no race.
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1

    def record(self, seconds: float) -> None:
        self._calls += 1
        weight = 1 / self._calls if self._calls < 10 else 0.1
        self.mean_seconds += weight * (seconds - self.mean_seconds)

    def retry_after(self) -> int:
        """Seconds until the queue ahead has likely drained (at least 1)."""
        return max(1, math.ceil(self.in_flight * self.mean_seconds))


class Uploads:
    """Receives request bodies before admission, at most ``limit`` at once
    (so memory is bounded: each holds up to the upload limit) and each within
    ``timeout`` seconds in all (so a client trickling its body holds nothing
    for long, and nobody waits on it: 408)."""

    def __init__(self, limit: int, timeout: float) -> None:
        self.limit = limit
        self.timeout = timeout
        self.receiving = 0

    async def receive(self, request: Request, max_bytes: int) -> bytes:
        """The upload's bytes (see :func:`read_upload`), or a 503 when too
        many bodies are already being received, or a 408 past the deadline."""
        if self.receiving >= self.limit:  # on the event loop, no await before the increment: no race
            raise HTTPException(503, f"busy: {self.limit} uploads already being received; retry later",
                                headers={"Retry-After": "1", "Connection": "close"})
        self.receiving += 1
        try:
            return await asyncio.wait_for(read_upload(request, max_bytes), self.timeout)
        except asyncio.TimeoutError:  # TimeoutError from Python 3.11 on
            # Connection: close, so the server stops reading the rest of the body.
            raise HTTPException(408, f"upload not received within {self.timeout:g} s; send the whole "
                                     "body at once", headers={"Connection": "close"}) from None
        finally:
            self.receiving -= 1


def _add_error_handlers(app: FastAPI) -> None:
    """Every answer is JSON with one ``error`` line, an unexpected failure
    included (a 500 that names the exception rather than an HTML page)."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return JSONResponse({"error": f"invalid request: {where}: {first.get('msg', 'invalid value')}"},
                            status_code=422)

    @app.exception_handler(RadarError)
    async def radar_error(request: Request, exc: RadarError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after this answer (so the traceback is logged)
        # and the server then drops the connection: tell the client not to reuse it.
        detail = f": {first_line(exc)}" if str(exc).strip() else ""
        return JSONResponse({"error": f"internal error: {type(exc).__name__}{detail}"},
                            status_code=500, headers={"Connection": "close"})


# ------------------------------------------------------------------- uploads
def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _limited_receive(receive: Receive, limit: int) -> Receive:
    """``receive`` that refuses a body once more than ``limit`` bytes have
    arrived, so a body without (or with a false) Content-Length cannot fill
    memory."""
    received = 0

    async def limited() -> MutableMapping[str, Any]:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _too_large(limit)
        return message

    return limited


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"upload larger than the limit of {limit} bytes ({limit / 2**20:.1f} MiB)")


async def read_upload(request: Request, limit: int) -> bytes:
    """The uploaded image's bytes, from a multipart ``file`` field or a raw
    ``image/*`` body, never more than ``limit`` of them."""
    media = _media_type(request.headers.get("content-type"))
    multipart = media == "multipart/form-data"
    if not multipart and media not in IMAGE_TYPES:
        raise HTTPException(415, f"unsupported content type {media or '(none)'!r}: send multipart/form-data "
                                 "with a 'file' field, or the image itself as image/png, image/jpeg, ...")
    body_limit = limit + (MULTIPART_OVERHEAD if multipart else 0)
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise HTTPException(400, f"invalid Content-Length header {declared!r}")
        if int(declared) > body_limit:
            raise _too_large(limit)
    limited = Request(request.scope, _limited_receive(request.receive, body_limit))
    try:
        if not multipart:
            return b"".join([chunk async for chunk in limited.stream()])
        form = await limited.form(max_files=1, max_fields=16, max_part_size=64 * 2**10)
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise HTTPException(400, "multipart upload has no file in a field named 'file'")
            part_type = _media_type(upload.content_type)
            if part_type not in IMAGE_TYPES and part_type not in UNTYPED_PARTS:
                raise HTTPException(415, f"unsupported file type {part_type!r}: upload a PNG, JPEG, BMP, "
                                         "TIFF, WebP or GIF image")
            data = await upload.read()
        finally:
            await form.close()
    except ClientDisconnect:
        raise HTTPException(400, "the client closed the connection before the upload finished") from None
    if len(data) > limit:
        raise _too_large(limit)
    return data


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Identify the image and check its pixel count from the header alone,
    before anything is decoded (a small file can declare a huge image)."""
    if not data:
        raise HTTPException(400, "empty upload (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise HTTPException(413, f"image has more pixels than this service accepts ({max_pixels})") from None
    except UnidentifiedImageError:
        raise HTTPException(400, "not a decodable image: expected PNG, JPEG, BMP, TIFF, WebP or GIF") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise HTTPException(400, f"cannot read image header: {first_line(exc)}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise HTTPException(413, f"image is {width}x{height} = {width * height} pixels, more than the "
                                 f"{max_pixels} this service accepts")
    return image


def _decode_and_predict(radar: Any, image: Image.Image) -> Any:
    """Decode (truncated or corrupt data fails here, as 400) and predict
    (a too small image fails in the model's own checks, as 422)."""
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise HTTPException(413, "image has more pixels than this service accepts") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise HTTPException(400, f"cannot decode image (truncated or corrupt?): {first_line(exc)}") from None
    return radar.predict(image)


# ------------------------------------------------------------------ answers
def _prediction_json(prediction: Any, maps: bool) -> dict[str, Any]:
    """The JSON answer; the maps are the pictures ``radar detect`` writes."""
    height, width = prediction.anomaly_map.shape
    body: dict[str, Any] = {
        # null when not finite (decision.non_finite = "anomalous" keeps the verdict)
        "score": _finite_or_none(prediction.score),
        "verdict": prediction.verdict,
        "is_anomalous": bool(prediction.is_anomalous),
        # null when the false-alarm rule can flag nothing (too few conformal images)
        "threshold": _finite_or_none(prediction.threshold),
        "p_value": _finite_or_none(prediction.p_value),
        "pixel_threshold": _finite_or_none(prediction.pixel_threshold),
        "width": int(width),
        "height": int(height),
        "mask_fraction": float(prediction.mask.mean()),
    }
    if maps:
        pictures = prediction_maps(prediction)
        body.update(anomaly_map=png_base64(pictures["anomaly"]), mask=png_base64(pictures["mask"]),
                    overlay=png_base64(pictures["overlay"]))
    return body


def _finite_or_none(value: Any) -> float | None:
    """JSON has no NaN or infinity (the response would fail to render as a
    500): a number that is not finite is answered as null."""
    return float(value) if value is not None and math.isfinite(value) else None


def model_identity(path: str | Path) -> dict[str, str]:
    """The model's name and fingerprint for ``GET /model``: enough to tell
    which model answers, without revealing where it lies on the server."""
    from ..persistence import model_fingerprint

    path = Path(path)
    return {"model_name": path.resolve().name, "model_fingerprint": model_fingerprint(path)}



def model_metadata(radar: Any) -> dict[str, Any]:
    """What a client needs to know about the model behind the service: the
    model file's own metadata (config, thresholds, training record) plus the
    backend and the few settings the page shows."""
    config = radar.config
    return {
        **radar.metadata(),
        "radar_ad_version": __version__,
        "backend": radar.backend,
        "engine": radar.backend_.describe(),
        "patch_size": config.patch_size,
        "grayscale": config.data.grayscale,
        "resize": config.data.resize,
    }


# ------------------------------------------------------------------ running
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


def _server(app: FastAPI) -> uvicorn.Server:
    """A uvicorn server of ``app`` with its header deadline."""
    protocol = header_deadline_protocol(app.state.model.limits["header_timeout"])
    return uvicorn.Server(uvicorn.Config(app, http=protocol, log_level="warning",
                                         timeout_graceful_shutdown=GRACEFUL_SECONDS))


@contextmanager
def background_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` on a thread for the duration of a ``with`` block and yield
    its base URL (tests, benchmarks, notebooks)."""
    sock = bind_socket(host, port)
    server = _server(app)
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
