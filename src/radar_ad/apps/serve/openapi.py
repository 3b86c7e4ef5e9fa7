"""What the OpenAPI schema of ``radar serve`` says its routes answer, where
FastAPI cannot see it from a route's signature: the routes build their
``JSONResponse`` themselves, every error leaves through the app's handlers as
``{"error": "..."}`` (:class:`ErrorAnswer`) rather than FastAPI's default
bodies, and ``POST /predict`` reads its body raw (so that the guards bound it
while it streams in). Each route passes its ``responses=`` from here.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field
from typing_extensions import NotRequired, TypedDict

from .guards import IMAGE_TYPES


class ErrorAnswer(BaseModel):
    """Every error answer of the service: one line that says what went wrong."""

    error: str = Field(description="What went wrong, in one line.")


class Readiness(TypedDict):
    """The answer of `GET /ready`, 200 and 503 alike: `ready` always; which
    process answers, with which model, once its model is loaded; the pool's
    count in a pool of workers."""

    # A TypedDict: a field that does not apply is left out of the answer, not sent as null.
    ready: Annotated[bool, Field(description="Whether this process can predict (in a pool: and every worker can).")]
    worker: NotRequired[Annotated[int, Field(description="The process id of the worker that answered; once its "
                                                         "model is loaded.")]]
    workers: NotRequired[Annotated[int, Field(description="How many worker processes serve the port; once its "
                                                          "model is loaded, or in a pool.")]]
    threads: NotRequired[Annotated[int, Field(description="The CPU threads this worker's model uses; once its "
                                                          "model is loaded.")]]
    load_seconds: NotRequired[Annotated[float | None, Field(
        description="Seconds this worker took to load its model (null: it was given a loaded one); once its model "
                    "is loaded.")]]
    model_name: NotRequired[Annotated[str, Field(description="The model folder's name; once the model is loaded, "
                                                             "when known.")]]
    model_fingerprint: NotRequired[Annotated[str, Field(
        description="The model's fingerprint, the same in every worker that serves the same model; once the model "
                    "is loaded, when known.")]]
    workers_ready: NotRequired[Annotated[int, Field(description="In a pool: how many workers have loaded their "
                                                                "model.")]]
    reason: NotRequired[Annotated[str, Field(description="In a pool not yet ready: how many of its workers have "
                                                         "loaded the model.")]]


# ErrorAnswer's place among the schema's components (every route that names the model puts it there).
ERROR_ANSWER = "#/components/schemas/ErrorAnswer"
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
LOADING = {"model": ErrorAnswer, "headers": RETRY_AFTER,
           "description": "The model is still loading (a worker that has just started); `Retry-After` says when "
                          "to retry, and the connection is closed."}

# What POST /predict reads: the route takes the raw request, so the schema is stated here.
PREDICT_BODY = {
    "required": True,
    "description": "One image: a multipart `file` field (its part typed as an image or untyped), or the image "
                   "itself as the body with its image type. At most the service's `max_upload_bytes` (`limits` "
                   "of `GET /model`); PNG, JPEG, BMP, TIFF, WebP or GIF.",
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {"type": "string", "format": "binary"}}}},
        **{media: {"schema": {"type": "string", "format": "binary"}} for media in sorted(IMAGE_TYPES)},
    },
}
# The answers of POST /predict: its errors are the guards' and the error handlers'.
PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The prediction: verdict, score, p-value, thresholds, image size, mask fraction and "
                         "the milliseconds it took; with `maps=1` also `anomaly_map`, `mask` and `overlay` as "
                         "base64 PNGs."},
    400: {"model": ErrorAnswer,
          "description": "Not a usable upload: empty, not a PNG, JPEG, BMP, TIFF, WebP or GIF image, truncated or "
                         "corrupt, a multipart body without a `file` field, an invalid `Content-Length`, or a "
                         "client that closed the connection before the upload finished."},
    408: {"model": ErrorAnswer,
          "description": "The body did not arrive whole within `body_timeout` seconds; the connection is closed."},
    413: {"model": ErrorAnswer,
          "description": "The upload is larger than `max_upload_bytes`, or its image header declares more than "
                         "`max_pixels` pixels (refused before decoding)."},
    415: {"model": ErrorAnswer,
          "description": "The body is neither `multipart/form-data` nor an image type, or the multipart file's "
                         "type is not an image."},
    422: {"model": ErrorAnswer,
          "description": "An invalid query parameter, or an image the model refuses (e.g. smaller than a patch, "
                         "or a score that is not finite), with the model's own message."},
    500: {"model": ErrorAnswer,
          "description": "An unexpected failure, named in one line; the connection is closed."},
    503: {"model": ErrorAnswer, "headers": RETRY_AFTER,
          "description": "Not now: the model is still loading, `max_in_flight` requests are already admitted, or "
                         "`max_uploads` bodies are already being received. `Retry-After` says when to retry."},
}
READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Readiness,
          "description": "This process can predict: which worker answered, with how many threads and which model."},
    503: {"model": Readiness,
          "description": "Not ready: this process's model is still loading (`{\"ready\": false}`), or in a pool "
                         "not every worker's model is loaded yet (`workers_ready` of `workers`, and a `reason`)."},
}
# GET /model and GET /drift: their answers need the model.
NEEDS_MODEL_RESPONSES: dict[int | str, dict[str, Any]] = {503: LOADING}
RECENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorAnswer, "description": "An invalid query parameter: `after` is not an integer."},
}
METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The metrics in Prometheus's text exposition format."},
    # JSON, unlike the route's 200: stated as content, since a model would be filed under text/plain.
    501: {"content": {"application/json": {"schema": {"$ref": ERROR_ANSWER}}},
          "description": "prometheus-client is not installed (`pip install 'radar-ad[metrics]'`)."},
}
