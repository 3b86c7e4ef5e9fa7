"""The HTTP app of ``radar serve`` and its routes: ``POST /predict``,
``GET /model``, ``GET /health``, ``GET /ready`` and the page at ``/`` here;
``GET /drift``, ``GET /recent`` and ``GET /metrics`` from
:mod:`~radar_ad.apps.serve.monitoring`. Every answer is JSON, an error one
``{"error": "..."}`` (the package docstring describes the service).
"""

from __future__ import annotations

import os
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ... import __version__
from ...errors import RadarError, first_line
from ...records import json_fields, result_record
from ...report import png_base64, prediction_maps
from .guards import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_MAX_UPLOADS,
    Admission,
    Uploads,
    check_int,
    check_limits,
    decode_upload,
    header_deadline_protocol,
    open_upload,
)
from .metrics import Metrics, RequestMetrics
from .monitoring import DEFAULT_RECENT, MAX_RECENT_BOUND, LineMonitor, add_line_routes, state_folder
from .openapi import NEEDS_MODEL_RESPONSES, PREDICT_BODY, PREDICT_RESPONSES, READY_RESPONSES

if TYPE_CHECKING:
    from ...outputs import Prediction

# Worker processes of one service: 64 covers a large machine, each worker holding its own model copy.
DEFAULT_WORKERS = 1
MAX_WORKERS_BOUND = 64
# Seconds a stopping server has to finish the requests it is answering.
GRACEFUL_SECONDS = 10
# What a client is told to wait while the model loads (a small model: seconds).
LOADING_RETRY_AFTER = 2
# What POST /predict answers of a prediction (the maps are added with ?maps=1).
ANSWER_KEYS = ("score", "verdict", "is_anomalous", "threshold", "p_value", "pixel_threshold", "width", "height",
               "mask_fraction")
MAPS = ("Add the anomaly map, the mask and the overlay to the answer as base64 PNGs (`anomaly_map`, `mask`, "
        "`overlay`): `maps=1` (or `true`, `yes`, `on`).")


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
    pool's metrics folder (:mod:`~radar_ad.apps.serve.metrics`). ``state``: the
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

    @app.get("/ready", responses=READY_RESPONSES)
    async def ready() -> JSONResponse:
        body = served.readiness()
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get("/model", responses=NEEDS_MODEL_RESPONSES)
    async def model() -> dict[str, Any]:
        if served.metadata is None:
            raise _loading()
        return {**served.metadata, "drift": await run_in_threadpool(line.drift_summary)}

    @app.post("/predict", responses=PREDICT_RESPONSES, openapi_extra={"requestBody": PREDICT_BODY})
    async def predict(request: Request, maps: bool = Query(False, description=MAPS)) -> JSONResponse:
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
            image = open_upload(data, max_pixels)
            async with admission.model_lock:
                model_started = time.perf_counter()
                prediction = await run_in_threadpool(_decode_and_predict, radar, image, max_pixels)
                admission.record(time.perf_counter() - model_started)
            body = await run_in_threadpool(prediction_answer, prediction, maps)
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
        worker's model is loaded (``workers_ready`` of ``workers``). The
        schema states its fields (:class:`~radar_ad.apps.serve.openapi.Readiness`)."""
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


def _decode_and_predict(radar: Any, image: Image.Image, max_pixels: int) -> Prediction:
    """Decode (truncated or corrupt data fails here, as 400) and predict
    (a too small image fails in the model's own checks, as 422)."""
    decode_upload(image, max_pixels)
    return radar.predict(image)


# ------------------------------------------------------------------ answers
def prediction_answer(prediction: Prediction, maps: bool) -> dict[str, Any]:
    """The JSON answer of ``POST /predict``: the prediction's record
    (:mod:`radar_ad.records`; a number that is not finite is null, a
    threshold too when the false-alarm rule can flag nothing) and, with
    ``maps``, the pictures ``radar detect`` writes, as base64 PNGs."""
    body = json_fields(result_record(prediction), ANSWER_KEYS)
    if maps:
        pictures = prediction_maps(prediction)
        body.update(anomaly_map=png_base64(pictures["anomaly"]), mask=png_base64(pictures["mask"]),
                    overlay=png_base64(pictures["overlay"]))
    return body


def model_identity(path: str | Path) -> dict[str, str]:
    """The model's name and fingerprint for ``GET /model``: enough to tell
    which model answers, without revealing where it lies on the server."""
    from ...persistence import model_fingerprint

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
        "backend": radar.backend_name,
        "engine": radar.backend_.describe(),
        "patch_size": config.patch_size,
        "grayscale": config.data.grayscale,
        "resize": config.data.resize,
    }


def uvicorn_server(app: FastAPI) -> uvicorn.Server:
    """A uvicorn server of ``app`` with its header deadline."""
    protocol = header_deadline_protocol(app.state.model.limits["header_timeout"])
    return uvicorn.Server(uvicorn.Config(app, http=protocol, log_level="warning",
                                         timeout_graceful_shutdown=GRACEFUL_SECONDS))
