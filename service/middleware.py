"""ASGI middleware: the request-body size and time limits and the per-request metrics.

Both are plain ASGI (not BaseHTTPMiddleware) so streamed responses, which the generation routes
use for SSE, pass through untouched and unbuffered.
"""

from __future__ import annotations

import asyncio
import time

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import BadRequest, PayloadTooLarge, RequestTimeout, ServiceError
from service.guards import parse_length, reject
from service.state import ServiceState


class BodyLimitMiddleware:
    """413 when Content-Length or the bytes actually received exceed `max_bytes`; 408 when the
    body has not fully arrived `timeout_s` after the request started.

    A chunked body that crosses the limit is answered 413 from here, at once: the app then sees
    a disconnect, and whatever it answers to that is dropped.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            length = parse_length(declared)
            if length is None or length > self.max_bytes:
                await reject(scope, receive, send, PayloadTooLarge(self._message(
                    f"request body of {declared[:40]!r} bytes")) if length is not None
                    else BadRequest(f"bad Content-Length {declared[:40]!r}"))
                return
        await self.app(scope, *self._guarded(scope, receive, send))

    def _guarded(self, scope: Scope, receive: Receive, send: Send) -> tuple[Receive, Send]:
        """(receive, send) for the app: receive enforces size and time until the body is
        complete; send drops the app's own reply once this middleware has answered."""
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        received, body_done, started, answered = 0, False, False, False

        async def refuse(error: ServiceError) -> Message:
            nonlocal answered
            if not started and not answered:
                answered = True
                await reject(scope, receive, send, error)
            return {"type": "http.disconnect"}

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done or answered:
                return await receive()
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), max(remaining, 0.0))
            except TimeoutError:
                return await refuse(RequestTimeout(
                    f"the request body did not arrive within {self.timeout_s:g} s "
                    "(NEUTRENO_BODY_TIMEOUT_S)"))
            received += len(message.get("body", b""))
            body_done = message["type"] != "http.request" or not message.get("more_body")
            if received > self.max_bytes:
                return await refuse(PayloadTooLarge(
                    self._message(f"request body of over {received} bytes")))
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:
                return
            started = True
            await send(message)

        return limited_receive, guarded_send

    def _message(self, what: str) -> str:
        return f"{what} exceeds the limit of {self.max_bytes} (NEUTRENO_MAX_BODY_BYTES)"


class MetricsMiddleware:
    """neutreno_requests_total and neutreno_request_duration_seconds for every HTTP request.

    Labels: `endpoint` is the matched route template (bounded cardinality), `model` the `name`
    path parameter when it names a loaded model, else empty.
    """

    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        name = scope.get("path_params", {}).get("name", "")
        model = name if name in self.state.models or name in self.state.failures else ""
        metrics = self.state.metrics
        metrics.requests_total.labels(model, endpoint, str(status)).inc()
        metrics.request_duration_seconds.labels(model, endpoint).observe(seconds)
