"""``radar serve``: a fitted model behind HTTP, for inspection stations and
people with a browser.

``POST /predict`` takes one image (a multipart ``file`` field or a raw
``image/*`` body) and answers the verdict, score and, with ``?maps=1``, the
anomaly map, mask and overlay as base64 PNGs. ``GET /model`` describes the
model, ``GET /health`` answers while the process is up, and ``GET /`` is a
small offline web page over the same API.

Uploads are untrusted, so every way one can be unusable is a 4xx JSON answer
``{"error": "..."}`` decided before any expensive work (the admission guards,
:mod:`radar_ad.apps.serve.guards`): the size is bounded while the body
streams in, the pixel count is read from the image header before anything is
decoded, and the model's own checks (an image smaller than a patch) surface
as 422 with their message, a non-finite score included
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

``max_pixels`` bounds what one request costs. Inference streams in bounded
tiles, so a request costs a constant plus a few bytes per pixel (upload,
decoding, the prediction, three PNG maps and their base64), and model calls
are serialised, so one inference's working memory exists at a time.
``DEFAULT_MAX_PIXELS`` is sized so that ``DEFAULT_MAX_IN_FLIGHT`` requests of
that many pixels fit a 16 GiB machine even if all held their peak at once
([results](../results.md#a-large-image-in-radar-serve)). Time grows with the
pixels too, so a service that must answer quickly lowers ``--max-pixels``; a
bigger machine may raise it up to ``MAX_PIXELS_BOUND``.

A client has ``header_timeout`` seconds to send a request's headers, then
its connection is closed (:class:`radar_ad.apps.serve.guards.HeaderDeadline`):
a client trickling its headers holds a connection for no longer than that.

``GET /health`` is liveness (200 while the process is up, even while its
model loads); ``GET /ready`` is readiness: 503 ``{"ready": false}`` until this
process's model is loaded, then 200 with its pid, thread count and model
fingerprint; in a pool of workers, 503 until every worker's model is loaded
(with how many of them are). ``POST /predict``, ``GET /model`` and ``GET
/drift`` answer 503 with ``Retry-After`` until then.

Every prediction feeds the model's drift monitor and the list of recent
results (:mod:`radar_ad.apps.serve.monitoring`: ``GET /drift``, ``GET
/recent``, the page's view of the line; kept in ``state`` and shared by the
pool when given) and the Prometheus metrics
(:mod:`radar_ad.apps.serve.metrics`: ``GET /metrics``).

Several workers (:func:`radar_ad.apps.serve.runner.serve` with
``workers=N``, ``radar serve --workers N``): the parent checks the model (on
the CPU, so that it holds no GPU memory while it only supervises), binds one
socket and starts N worker processes (``multiprocessing`` spawn) that each
run their own uvicorn server on that socket: the kernel hands each new
connection to one of them. Each worker takes its share of the cores
(:func:`radar_ad.backend.threads_per_worker`), listens at once and loads its
own copy of the model on a thread, so ``/ready`` is meaningful. Every limit
above applies per worker: N workers admit N x ``max_in_flight`` requests and
may use N times the memory. A worker that dies after loading is replaced;
one that cannot load its model stops the service with one line (it would
fail again). SIGINT or SIGTERM stops every worker (SIGTERM, each finishing
its requests for up to ``GRACEFUL_SECONDS``, then SIGKILL), and a worker
whose parent is gone stops itself: no orphan keeps the port. The parent
supervises the workers itself rather than through uvicorn's ``workers=N``
(:mod:`radar_ad.apps.serve.pool`): the settings reach the workers as
arguments (no app import string or environment variables; the one temporary
folder is the pool's metrics, removed at exit), a worker that cannot load its
model stops the service instead of being restarted in a loop, and a Ctrl-C
while a worker is still starting prints no traceback.
"""

from __future__ import annotations

from .app import (
    DEFAULT_WORKERS,
    GRACEFUL_SECONDS,
    LOADING_RETRY_AFTER,
    MAX_WORKERS_BOUND,
    ServedModel,
    create_app,
    model_identity,
    model_metadata,
    prediction_answer,
    uvicorn_server,
)
from .guards import (
    BODY_TIMEOUT_BOUND,
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_MAX_UPLOADS,
    HEADER_TIMEOUT_BOUND,
    MAX_IN_FLIGHT_BOUND,
    MAX_PIXELS_BOUND,
    MAX_UPLOAD_BYTES_BOUND,
    MAX_UPLOADS_BOUND,
    Admission,
    Uploads,
    check_int,
    check_limits,
    check_seconds,
    read_upload,
)
from .monitoring import DEFAULT_RECENT, MAX_RECENT_BOUND
from .runner import PORT_BOUND, background_server, bind_socket, serve, socket_url

__all__ = [
    "BODY_TIMEOUT_BOUND", "DEFAULT_BODY_TIMEOUT", "DEFAULT_HEADER_TIMEOUT", "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_UPLOADS", "DEFAULT_MAX_UPLOAD_BYTES", "DEFAULT_RECENT", "DEFAULT_WORKERS",
    "GRACEFUL_SECONDS", "HEADER_TIMEOUT_BOUND", "LOADING_RETRY_AFTER", "MAX_IN_FLIGHT_BOUND", "MAX_PIXELS_BOUND",
    "MAX_RECENT_BOUND", "MAX_UPLOADS_BOUND", "MAX_UPLOAD_BYTES_BOUND", "MAX_WORKERS_BOUND", "PORT_BOUND",
    "Admission", "ServedModel", "Uploads", "background_server", "bind_socket", "check_int", "check_limits",
    "check_seconds", "create_app", "model_identity", "model_metadata", "prediction_answer", "read_upload", "serve",
    "socket_url", "uvicorn_server",
]
