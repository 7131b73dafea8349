"""Connection-level limits uvicorn lacks: a connection cap, header limits and timeouts.

uvicorn closes idle keep-alive connections (`timeout_keep_alive`) but never times out a client
that connects and then sends nothing, or sends its headers a byte at a time, or never reads its
response; it accepts any number of headers of any size, and connections until the process runs
out of file descriptors. `server_options` gives uvicorn its HTTP protocol class with these
limits added (the server enforces them itself: the edge proxy is not always in front):

- beyond NEUTRENO_MAX_CONNECTIONS open connections a new one is answered 503 and closed at once;
- a request's headers must be complete NEUTRENO_HEADER_TIMEOUT_S after the connection opened or
  the previous response ended, else the connection is closed (408 when nothing was sent yet
  would be a lie: there is no request to answer, so it is just closed);
- more than MAX_HEADER_COUNT header fields, or more than MAX_HEADER_BYTES of request line and
  headers, is answered 431 and the connection closed, as soon as the limit is crossed (the
  rest is never parsed or kept);
- a response the client stops reading (the socket's send buffer full and not shrinking) for
  NEUTRENO_SEND_TIMEOUT_S closes the connection, freeing what was buffered for it.

The body has its own deadline (NEUTRENO_BODY_TIMEOUT_S, `service.frontend.middleware`).
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import struct
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import Settings

FD_HEADROOM = 64  # descriptors kept for model files, logs and the listening socket
MAX_HEADER_COUNT = 100  # header fields per request (Apache's LimitRequestFields)
MAX_HEADER_BYTES = 64 * 1024  # request line + headers (nginx allows 4 x 8 KiB buffers)


def _raw_error(status: bytes, type_: str, message: str, extra: bytes = b"") -> bytes:
    """A complete HTTP/1.1 error response that closes the connection, with the service's JSON
    error body, for refusals made below the app."""
    body = json.dumps({"error": {"type": type_, "message": message}}).encode()
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: application/json\r\n"
        + extra
        + b"connection: close\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


BUSY = _raw_error(
    b"503 Service Unavailable",
    "overloaded",
    "too many open connections (NEUTRENO_MAX_CONNECTIONS); retry shortly",
    b"retry-after: 1\r\n",
)
HEADERS_TOO_LARGE = _raw_error(
    b"431 Request Header Fields Too Large",
    "headers_too_large",
    f"a request may carry at most {MAX_HEADER_COUNT} header fields and "
    f"{MAX_HEADER_BYTES} bytes of request line and headers",
)


class Deadline:
    """One connection timer: `arm` (re)starts it, `cancel` stops it; when it expires it calls
    `expire` once."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, seconds: float, expire: Callable[[], None]
    ) -> None:
        self.loop, self.seconds, self.expire = loop, seconds, expire
        self._handle: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        self.cancel()
        self._handle = self.loop.call_later(self.seconds, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        self.expire()


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a connection cap, header limits, a header-read
    deadline and a send timeout (see the module docstring)."""

    max_connections = 1024
    header_timeout_s = 10.0
    send_timeout_s = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline = Deadline(self.loop, self.header_timeout_s, self._header_timeout)
        self._send_deadline = Deadline(self.loop, self.send_timeout_s, self._send_check)
        self._unsent = 0  # send-buffer bytes at the last check while writing is paused
        self._in_headers = True  # between a request's first byte and its complete headers
        self._header_count = self._header_bytes = 0
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(BUSY)
            transport.close()
            return
        self._header_deadline.arm()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._in_headers and not self._refused:
            self._header_bytes += len(data)  # still in the headers: all of it was header
            if self._header_bytes > MAX_HEADER_BYTES:
                self._refuse_headers()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers, self._header_count = True, 0

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        self._header_count += 1
        if self._header_count > MAX_HEADER_COUNT:
            self._refuse_headers()
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._header_deadline.cancel()
        if self._refused:
            return
        self._in_headers, self._header_bytes = False, 0
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def _refuse_headers(self) -> None:
        """431 and close: the request's headers crossed a limit; nothing more is parsed."""
        self._refused = True
        self._header_deadline.cancel()
        self.transport.write(HEADERS_TOO_LARGE)
        self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._unsent = self.transport.get_write_buffer_size()
        self._send_deadline.arm()

    def resume_writing(self) -> None:
        self._send_deadline.cancel()
        super().resume_writing()

    def _send_check(self) -> None:
        """Writing still paused a send timeout later: drop the client unless it read some."""
        unsent = self.transport.get_write_buffer_size()
        if unsent >= self._unsent:
            self._reset()
            return
        self._unsent = unsent
        self._send_deadline.arm()

    def _reset(self) -> None:
        """Close with a reset: the buffered response is freed now, and the kernel drops what
        its send buffer still holds for the client (a plain close would keep sending it)."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)  # its headers are complete: it starts now
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._header_deadline.arm()  # the next request's headers get the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._header_deadline.cancel()
        self._send_deadline.cancel()
        super().connection_lost(exc)

    def _header_timeout(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()


def max_connections(settings: Settings) -> int:
    """NEUTRENO_MAX_CONNECTIONS, lowered to what the file-descriptor limit allows."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return settings.max_connections
    return max(1, min(settings.max_connections, soft - FD_HEADROOM))


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for the connection and keep-alive limits."""
    protocol = type(
        "LimitedHttpProtocol",
        (LimitedHttpProtocol,),
        {
            "max_connections": max_connections(settings),
            "header_timeout_s": settings.header_timeout_s,
            "send_timeout_s": settings.send_timeout_s,
        },
    )
    return {"http": protocol, "timeout_keep_alive": settings.keepalive_timeout_s}
