"""ASGI middleware: the request-body size and time limits, the per-request metrics, the
request log and the request's trace span.

Both are plain ASGI (not BaseHTTPMiddleware) so streamed responses, which the generation routes
use for SSE, pass through untouched and unbuffered.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import logs, tracing
from service.errors import BadRequest, PayloadTooLarge, RequestTimeout, ServiceError
from service.frontend.guards import parse_length, reject
from service.frontend.state import ServiceState


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
                await reject(
                    scope,
                    receive,
                    send,
                    PayloadTooLarge(self._message(f"request body of {declared[:40]!r} bytes"))
                    if length is not None
                    else BadRequest(f"bad Content-Length {declared[:40]!r}"),
                )
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
                return await refuse(
                    RequestTimeout(
                        f"the request body did not arrive within {self.timeout_s:g} s "
                        "(NEUTRENO_BODY_TIMEOUT_S)"
                    )
                )
            received += len(message.get("body", b""))
            body_done = message["type"] != "http.request" or not message.get("more_body")
            if received > self.max_bytes:
                return await refuse(
                    PayloadTooLarge(self._message(f"request body of over {received} bytes"))
                )
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
        sender = StatusSend(send)
        try:
            await self.app(scope, receive, sender)
        finally:
            self._record(scope, sender.status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        name = scope.get("path_params", {}).get("name", "")
        self.state.count_request(name, route_of(scope) or "unmatched", status, seconds)


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
            tracing.current_trace_id() or logs.trace_id_from(headers.get(b"traceparent")),
        )
        token = logs.CURRENT.set(context)
        started = time.perf_counter()
        sender = StatusSend(send, ((logs.REQUEST_ID_HEADER.encode(), context.request_id.encode()),))
        try:
            await self.app(scope, receive, sender)
        finally:
            self._log(scope, context, sender.status, time.perf_counter() - started)
            logs.CURRENT.reset(token)

    def _log(self, scope: Scope, context: logs.RequestContext, status: int, seconds: float) -> None:
        model = scope.get("path_params", {}).get("name") or context.model
        route = route_of(scope) or "unmatched"
        logs.log_access(
            self.ok_level, context, scope["method"], scope["path"], route, status, seconds, model
        )


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
