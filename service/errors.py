"""The one map from failures to HTTP statuses and JSON error bodies.

Every failure a request can meet is a `ServiceError` subclass carrying its status and a stable
`type` string. Handlers render them as `{"error": {"type", "message"}}` on v1 routes and as the
Open Inference Protocol's `{"error": "<message>"}` on /v2 routes. Framework errors (unknown
route, bad method, schema validation) and anything unexpected are rendered the same way, so no
response body is ever an HTML page or a bare traceback.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.logs import note_error

log = logging.getLogger("neutreno.service")


class ServiceError(Exception):
    """Base class: `status` and `type` are the contract, `message` says what exactly went wrong."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServiceError):
    status, type = 400, "invalid_request"


class InvalidImage(ServiceError):
    status, type = 400, "invalid_image"


class Unauthorized(ServiceError):
    status, type = 401, "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ServiceError):
    """A browser request from another site that the CORS settings do not allow."""

    status, type = 403, "forbidden"


class ModelNotFound(ServiceError):
    status, type = 404, "model_not_found"


class WrongTask(ServiceError):
    """The model exists but does not do what the route asks (classify on a segmenter)."""

    status, type = 400, "wrong_task"


class RequestTimeout(ServiceError):
    """The request body did not arrive within NEUTRENO_BODY_TIMEOUT_S."""

    status, type = 408, "request_timeout"


class PayloadTooLarge(ServiceError):
    status, type = 413, "payload_too_large"


class ResponseTooLarge(ServiceError):
    """The response asked for would exceed NEUTRENO_MAX_RESPONSE_BYTES."""

    status, type = 413, "response_too_large"


class UnsupportedMediaType(ServiceError):
    status, type = 415, "unsupported_media_type"


class QueueFull(ServiceError):
    status, type = 429, "queue_full"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after_s))})


class ModelNotReady(ServiceError):
    status, type = 503, "model_not_ready"


class Overloaded(ServiceError):
    """More requests in flight than NEUTRENO_MAX_INFLIGHT_REQUESTS."""

    status, type = 503, "overloaded"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class InferenceFailed(ServiceError):
    """ONNX Runtime raised while running a batch: a server-side fault, retryable."""

    status, type = 503, "inference_failed"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class DeadlineExceeded(ServiceError):
    status, type = 504, "deadline_exceeded"


def is_v2(request: Request) -> bool:
    """Open Inference Protocol routes use that protocol's flat error body."""
    return request.url.path.startswith("/v2")


def error_response(
    request: Request, status: int, type_: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """Render one error in the shape the route's protocol expects; the request's access record
    (one log line) carries it."""
    note_error(type_, message)
    body: dict[str, object] = (
        {"error": message} if is_v2(request) else {"error": {"type": type_, "message": message}}
    )
    return JSONResponse(body, status_code=status, headers=headers)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return error_response(request, exc.status, exc.type, exc.message, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return error_response(request, 422, "validation_error", "; ".join(parts) or "invalid request")


_HTTP_TYPES = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    type_ = _HTTP_TYPES.get(exc.status_code, "http_error")
    return error_response(request, exc.status_code, type_, str(exc.detail), dict(exc.headers or {}))


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client disconnected before its body arrived: nobody reads a reply (nginx's 499)."""
    return Response(status_code=499)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(request, 500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Register every handler above on the app."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
