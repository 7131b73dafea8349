"""ASGI middleware: the request-body size limit and the per-request metrics.

Both are plain ASGI (not BaseHTTPMiddleware) so streamed responses, which the generation routes
use for SSE, pass through untouched and unbuffered.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge, error_response
from service.state import ServiceState


class BodyLimitMiddleware:
    """413 when Content-Length or the bytes actually received exceed `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._reject(scope, receive, send, f"request body of {declared.decode()} bytes")
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise PayloadTooLarge(self._message(f"request body of over {received} bytes"))
            return message

        await self.app(scope, limited_receive, send)

    def _message(self, what: str) -> str:
        return f"{what} exceeds the limit of {self.max_bytes} (NEUTRENO_MAX_BODY_BYTES)"

    async def _reject(self, scope: Scope, receive: Receive, send: Send, what: str) -> None:
        request = Request(scope, receive)
        response = error_response(request, PayloadTooLarge.status, PayloadTooLarge.type,
                                  self._message(what), {"Connection": "close"})
        await response(scope, receive, send)


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
