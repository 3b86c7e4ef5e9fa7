"""The admission guards of ``radar serve``: what an untrusted client may
cost the service before it is answered, and the checks of the settings that
bound it.

- The body: its type (415), its size while it streams in (413), its arrival
  whole within ``body_timeout`` seconds (408), at most ``max_uploads``
  received at once (503). It is received before the request is admitted,
  so a slow uploader holds no admission slot.
- The image: its pixel count read from the header before anything is
  decoded (413), then decoded (400 for bytes that are no usable image), by
  :mod:`radar_ad.data`'s decoder.
- Admission: at most ``max_in_flight`` requests running plus waiting (503
  with ``Retry-After``), model calls one at a time.
- The headers: ``header_timeout`` seconds per request's headers, else the
  connection is closed (:class:`HeaderDeadline`).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

import h11
from fastapi import Request
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from ...data import decode_opened, open_image
from ...errors import ConfigError, ImageFileError

DEFAULT_MAX_UPLOAD_BYTES = 20 * 2**20
# 4000 x 4000: sized so that DEFAULT_MAX_IN_FLIGHT requests of it fit in 16 GiB
# even at their peak at once (see the package docstring).
DEFAULT_MAX_PIXELS = 16_000_000
DEFAULT_MAX_IN_FLIGHT = 8
# Bodies received at once (before admission): larger than DEFAULT_MAX_IN_FLIGHT
# so that uploading overlaps with inference, bounded so that memory is.
DEFAULT_MAX_UPLOADS = 32
# Seconds a client has to send its whole body.
DEFAULT_BODY_TIMEOUT = 20.0
# Seconds a client has to send a request's headers (a slowloris is cut off).
DEFAULT_HEADER_TIMEOUT = 10.0
# Upper bounds of the settings: far above any sensible value, low enough that a
# typo cannot make the service accept what exhausts the machine.
MAX_UPLOAD_BYTES_BOUND = 2**30
MAX_PIXELS_BOUND = 100_000_000
MAX_IN_FLIGHT_BOUND = 1024
MAX_UPLOADS_BOUND = 4096
BODY_TIMEOUT_BOUND = 600.0
HEADER_TIMEOUT_BOUND = 600.0
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
# How the image decoder's errors name an upload.
UPLOAD_NAME = "upload"
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


# ------------------------------------------------------------------ settings
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


# ----------------------------------------------------------------- admission
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


# ------------------------------------------------------------------- uploads
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


# -------------------------------------------------------------------- images
def open_upload(data: bytes, max_pixels: int) -> Image.Image:
    """Identify the uploaded image and check its pixel count from the header
    alone, before anything is decoded (a small file can declare a huge
    image): :func:`radar_ad.data.open_image`, its refusals as HTTP errors."""
    if not data:
        raise HTTPException(400, "empty upload (0 bytes)")
    try:
        return open_image(data, UPLOAD_NAME, max_pixels, formats=PIL_FORMATS)
    except ImageFileError as exc:
        raise _refused(exc, max_pixels) from None


def decode_upload(image: Image.Image, max_pixels: int) -> None:
    """Decode an image from :func:`open_upload` in place (truncated or
    corrupt data fails here, as 400)."""
    try:
        decode_opened(image, UPLOAD_NAME, max_pixels)
    except ImageFileError as exc:
        raise _refused(exc, max_pixels) from None


def _refused(exc: ImageFileError, max_pixels: int) -> HTTPException:
    """The decoder's refusal as the service's answer: 413 for too many
    pixels, else 400."""
    if exc.kind == "too large":
        if exc.size is None:  # PIL's own limit, before the header's size was known
            return HTTPException(413, f"image has more pixels than this service accepts ({max_pixels})")
        width, height = exc.size
        return HTTPException(413, f"image is {width}x{height} = {width * height} pixels, more than the "
                                  f"{max_pixels} this service accepts")
    if exc.kind == "not an image":
        return HTTPException(400, "not a decodable image: expected PNG, JPEG, BMP, TIFF, WebP or GIF")
    if exc.kind == "corrupt":
        return HTTPException(400, f"cannot decode image (truncated or corrupt?): {exc.reason}")
    return HTTPException(400, f"cannot read image header: {exc.reason}")


# ------------------------------------------------------------------- headers
class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol with a header deadline: a client has
    ``header_timeout`` seconds (a class attribute:
    :func:`header_deadline_protocol` makes the class uvicorn instantiates per
    connection) to send a request's line and headers, counted from the
    moment its connection opens, or, on a kept-alive connection, from the
    first byte of its next request.

    uvicorn bounds how long a kept-alive connection may stay silent between
    requests, but not how long a client may take over the headers
    themselves: one that sends a byte every few seconds (slowloris) would
    hold its connection and buffer forever, and a few hundred of them every
    file descriptor. Past the deadline the connection is closed: with a 408
    when part of a request had arrived, silently when nothing had (a
    browser's speculative connection). The body has its own deadline once
    the headers are in (``body_timeout``, :class:`Uploads`)."""

    header_timeout = DEFAULT_HEADER_TIMEOUT
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # these bytes begin (or continue) a request's headers
            self._arm()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the headers are complete: the request has started
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            return
        if self.conn.trailing_data[0]:  # part of a request arrived: say why it is cut off
            self.transport.write(_request_timeout(self.header_timeout))
        self.transport.close()


def _request_timeout(seconds: float) -> bytes:
    body = json.dumps({"error": f"request headers not received within {seconds:g} s"}).encode()
    head = ("HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n")
    return head.encode("ascii") + body


def header_deadline_protocol(header_timeout: float) -> type[H11Protocol]:
    """The protocol class to give ``uvicorn.Config(http=...)``: every
    connection of that server gets ``header_timeout`` seconds per request's
    headers."""
    return cast(type[H11Protocol], type("HeaderDeadline", (HeaderDeadline,), {"header_timeout": header_timeout}))
