"""Connection-level limits uvicorn lacks: a connection cap and a header-read timeout.

uvicorn closes idle keep-alive connections (`timeout_keep_alive`) but never times out a client
that connects and then sends nothing, or sends its headers a byte at a time, and it accepts
connections until the process runs out of file descriptors. `limited_protocol` returns uvicorn's
HTTP protocol class with both limits added:

- beyond NEUTRENO_MAX_CONNECTIONS open connections a new one is answered 503 and closed at once;
- a request's headers must be complete NEUTRENO_HEADER_TIMEOUT_S after the connection opened or
  the previous response ended, else the connection is closed (408 when nothing was sent yet
  would be a lie: there is no request to answer, so it is just closed).

The body has its own deadline (NEUTRENO_BODY_TIMEOUT_S, `service.frontend.middleware`).
"""

from __future__ import annotations

import asyncio
import json
import resource
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import Settings

FD_HEADROOM = 64  # descriptors kept for model files, logs and the listening socket


def _busy_response() -> bytes:
    body = json.dumps(
        {
            "error": {
                "type": "overloaded",
                "message": "too many open connections (NEUTRENO_MAX_CONNECTIONS); retry shortly",
            }
        }
    ).encode()
    return (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        b"retry-after: 1\r\nconnection: close\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


BUSY = _busy_response()


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a connection cap and a header-read deadline."""

    max_connections = 1024
    header_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(BUSY)
            transport.close()
            return
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)  # its headers are complete: it starts now
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._arm_header_timer()  # the next request's headers get the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
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
        },
    )
    return {"http": protocol, "timeout_keep_alive": settings.keepalive_timeout_s}
