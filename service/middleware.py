"""ASGI middleware: the request-body size limit, the per-request metrics, the request log and
the request's trace span.

Both are plain ASGI (not BaseHTTPMiddleware) so streamed responses, which the generation routes
use for SSE, pass through untouched and unbuffered.
"""

from __future__ import annotations

import logging
import time

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import logs, tracing
from service.errors import PayloadTooLarge, error_response
from service.state import ServiceState

access_log = logging.getLogger(logs.ACCESS_LOGGER)


def route_of(scope: Scope) -> str | None:
    """The matched route template (bounded cardinality), None before routing matched."""
    return getattr(scope.get("route"), "path", None)


class StatusSend:
    """Wraps `send` to remember the response status (500 until one starts) and to add
    `headers` to the response."""

    def __init__(self, send: Send, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.send = send
        self.headers = headers
        self.status = 500

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            if self.headers:
                message["headers"] = [*message.get("headers", ()), *self.headers]
        await self.send(message)


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
        sender = StatusSend(send)
        try:
            await self.app(scope, receive, sender)
        finally:
            self._record(scope, sender.status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        endpoint = route_of(scope) or "unmatched"
        name = scope.get("path_params", {}).get("name", "")
        model = name if name in self.state.models or name in self.state.failures else ""
        metrics = self.state.metrics
        metrics.requests_total.labels(model, endpoint, str(status)).inc()
        metrics.request_duration_seconds.labels(model, endpoint).observe(seconds)


class RequestLogMiddleware:
    """Request id in (`X-Request-Id`, or a new one) and out (the same response header), the
    request's log context (see `service.logs`), and one access record per request: warning
    for 4xx, error for 5xx, `ok_level` for the rest (info in json, debug in text, where a line
    per request would be noise)."""

    def __init__(self, app: ASGIApp, ok_level: int = logging.INFO) -> None:
        self.app = app
        self.ok_level = ok_level

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        context = logs.RequestContext(
            logs.request_id_from(headers.get(logs.REQUEST_ID_HEADER.encode())),
            tracing.current_trace_id() or logs.trace_id_from(headers.get(b"traceparent")))
        token = logs.CURRENT.set(context)
        started = time.perf_counter()
        sender = StatusSend(send, ((logs.REQUEST_ID_HEADER.encode(),
                                    context.request_id.encode()),))
        try:
            await self.app(scope, receive, sender)
        finally:
            self._log(scope, context, sender.status, time.perf_counter() - started)
            logs.CURRENT.reset(token)

    def _log(self, scope: Scope, context: logs.RequestContext, status: int,
             seconds: float) -> None:
        level = logging.ERROR if status >= 500 else \
            logging.WARNING if status >= 400 else self.ok_level
        if not access_log.isEnabledFor(level):
            return
        route = route_of(scope) or "unmatched"
        model = scope.get("path_params", {}).get("name") or context.model
        access_log.log(level, "%s %s %d %.1f ms", scope["method"], scope["path"], status,
                       seconds * 1000, extra={
                           "request_id": context.request_id, "trace_id": context.trace_id,
                           "route": route, "method": scope["method"], "status": status,
                           "duration_ms": round(seconds * 1000, 3), "model": model,
                           "error_type": context.error_type, "error": context.error})


class TracingMiddleware:
    """The SERVER span of every HTTP request (`service.tracing`); installed only when tracing
    is on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not tracing.enabled():
            await self.app(scope, receive, send)
            return
        sender = StatusSend(send)
        with tracing.server_span(scope) as span:
            try:
                await self.app(scope, receive, sender)
            finally:
                tracing.end_server_span(span, route_of(scope), scope["method"], sender.status)
