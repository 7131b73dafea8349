"""Service errors as gRPC statuses, the way Triton maps its errors onto gRPC codes.

`service.errors` stays the one home of what can go wrong and of its HTTP status; this module
only translates that HTTP status into the gRPC code a Triton or KServe client expects. A refusal
that asks the client to come back later (queue full, overloaded, a failed batch) carries the
wait twice: a `retry-after` trailing metadata entry (seconds, as the HTTP header) and a
google.rpc `RetryInfo` in the standard `grpc-status-details-bin` trailer, which grpcio-status
and other clients' retry helpers read.
"""

from __future__ import annotations

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from service.errors import ServiceError
from service.logs import escaped

# HTTP status (service.errors) -> gRPC code. 413 is RESOURCE_EXHAUSTED as gRPC's own message
# limit reports it; 429 RESOURCE_EXHAUSTED as Triton's rate limiter; 499 a call the client ended.
CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
DETAILS_KEY = "grpc-status-details-bin"
MAX_DETAILS_CHARS = 2000  # a status message travels in a header: keep it well under the limit

Metadata = tuple[tuple[str, str | bytes], ...]


def code_of(error: ServiceError) -> grpc.StatusCode:
    """The gRPC code for a service error (INTERNAL for anything without a mapping)."""
    return CODES.get(error.status, grpc.StatusCode.INTERNAL)


def trailers(error: ServiceError, message: str) -> Metadata:
    """Trailing metadata for `error`: its HTTP headers (retry-after, www-authenticate) by
    their lower-case names, and a RetryInfo status detail when it asks for a retry."""
    metadata: list[tuple[str, str | bytes]] = [(k.lower(), v) for k, v in error.headers.items()]
    retry = error.headers.get("Retry-After")
    if retry is not None and retry.isdigit():
        status = status_pb2.Status(code=code_pb2.Code.Value(code_of(error).name), message=message)
        status.details.add().Pack(
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=int(retry)))
        )
        metadata.append((DETAILS_KEY, status.SerializeToString()))
    return tuple(metadata)


def details(message: str) -> str:
    """A status message safe to send: bounded, printable ASCII (it travels as a header)."""
    return escaped(message, MAX_DETAILS_CHARS)
