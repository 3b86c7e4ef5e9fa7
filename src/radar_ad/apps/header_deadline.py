"""The header deadline of ``radar serve``: a client has ``header_timeout``
seconds to send a request's line and headers, counted from the moment its
connection opens, or, on a kept-alive connection, from the first byte of its
next request.

uvicorn bounds how long a kept-alive connection may stay silent between
requests, but not how long a client may take over the headers themselves: one
that sends a byte every few seconds (slowloris) would hold its connection and
buffer forever, and a few hundred of them every file descriptor. Past the
deadline the connection is closed: with a 408 when part of a request had
arrived, silently when nothing had (a browser's speculative connection). The
body has its own deadline once the headers are in (``body_timeout``).
"""

from __future__ import annotations

import asyncio
import json
from typing import cast

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol with the header deadline (``header_timeout``
    seconds, a class attribute: :func:`header_deadline_protocol` makes the
    class uvicorn instantiates per connection)."""

    header_timeout = 10.0
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
