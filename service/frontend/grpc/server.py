"""One front end's gRPC server: `inference.GRPCInferenceService` and `grpc.health.v1.Health`.

Every front end binds NEUTRENO_GRPC_PORT with SO_REUSEPORT, so the kernel spreads gRPC
connections over the front ends as it spreads HTTP ones over their shared socket. The server
runs on the front end's event loop beside uvicorn (started and stopped in the app's lifespan).

Per call (`GrpcServer._behavior`): the request bytes are parsed here, so a malformed message is
INVALID_ARGUMENT rather than a framework error; the API key is read from the `authorization`
metadata (`Bearer <key>`, the HTTP check itself); the call gets the request id (`x-request-id`)
and trace (`traceparent`) context the HTTP middleware gives a request, a SERVER span when
tracing is on, one access record, and `neutreno_requests_total` /
`neutreno_request_duration_seconds` samples with the endpoint `grpc_<method>` (`grpc_infer`
for ModelInfer) and the HTTP-equivalent status, so dashboards and alerts on 5xx see both
protocols. Limits: messages as the HTTP body (NEUTRENO_MAX_BODY_BYTES) in and the /v2 response
limit out, metadata NEUTRENO_GRPC_MAX_METADATA_BYTES, calls at once
NEUTRENO_MAX_INFLIGHT_REQUESTS (more are RESOURCE_EXHAUSTED, from gRPC itself).

Health: SERVING for "" and the inference service exactly when /readyz would say ready (polled
every 0.25 s). Drain: once the front end starts draining, health goes NOT_SERVING, the server
stops taking calls and gives those in flight NEUTRENO_DRAIN_TIMEOUT_S to finish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service import logs, tracing
from service.errors import BadRequest, ServiceError
from service.frontend.grpc import errors
from service.frontend.grpc.servicer import SERVICE, Call, Rpc, Servicer
from service.frontend.security import check_api_key
from service.frontend.state import ServiceState

log = logging.getLogger("neutreno.service")

HEALTH_EVERY_S = 0.25
SEND_SLACK_BYTES = 1 << 16  # envelope beyond NEUTRENO_MAX_RESPONSE_BYTES' tensor bound


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def options(state: ServiceState) -> list[tuple[str, int]]:
    settings = state.settings
    return [
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", settings.max_response_bytes + SEND_SLACK_BYTES),
        ("grpc.max_metadata_size", settings.grpc_max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", settings.grpc_max_metadata_bytes),
    ]


class GrpcServer:
    """Start, health and drain of the gRPC server for one front end (nothing when the port is
    0)."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.servicer = Servicer(state)
        self.health = health.aio.HealthServicer()
        self.server: Any = None
        self.port = 0
        self._watcher: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._health_status: int | None = None

    async def start(self) -> None:
        """Bind and serve. A port that cannot be bound (taken by a process without
        SO_REUSEPORT) is logged as an error and leaves this front end HTTP-only."""
        settings = self.state.settings
        if settings.grpc_port == 0:
            return
        server = grpc.aio.server(
            options=options(self.state), maximum_concurrent_rpcs=settings.max_inflight_requests
        )
        server.add_generic_rpc_handlers((self._handlers(),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        where = address(settings.host, settings.grpc_port)
        try:
            self.port = server.add_insecure_port(where)
        except RuntimeError as exc:
            log.error("gRPC: cannot listen on %s (%s); this front end serves HTTP only", where, exc)
            return
        await server.start()
        self.server = server
        await self._set_health()
        self._watcher = asyncio.create_task(self._watch(), name="grpc-health")

    async def stop(self) -> None:
        """Stop taking calls and let those in flight finish (NEUTRENO_DRAIN_TIMEOUT_S)."""
        if self.server is None:
            return
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._drain())
        await self._stopping
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)

    async def _drain(self) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.state.settings.drain_timeout_s)

    async def _watch(self) -> None:
        """Keep health in step with readiness; start the drain when the front end drains."""
        while True:
            await asyncio.sleep(HEALTH_EVERY_S)
            if self.state.draining:
                if self._stopping is None:
                    self._stopping = asyncio.create_task(self._drain())
                return
            await self._set_health()

    async def _set_health(self) -> None:
        """SERVING exactly when the front end is ready (set on a change only)."""
        serving = health_pb2.HealthCheckResponse.SERVING
        status = (
            serving if not self.state.readiness() else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        if status != self._health_status:
            self._health_status = status
            for service in ("", SERVICE):
                await self.health.set(service, status)

    def _handlers(self) -> Any:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                name: grpc.unary_unary_rpc_method_handler(self._behavior(name, rpc))
                for name, rpc in self.servicer.rpcs.items()
            },
        )

    def _behavior(self, method: str, rpc: Rpc) -> Any:
        """The call handler for one RPC: raw bytes in, serialized response out."""
        settings = self.state.settings
        path = f"/{SERVICE}/{method}"

        async def behavior(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
            call = Call(context.time_remaining())
            started = time.perf_counter()
            status, failure, payload = 500, None, b""
            with self._observed(path, metadata) as record:
                try:
                    if rpc.needs_key:
                        check_api_key(settings.api_key, metadata.get("authorization"))
                    try:
                        request = rpc.request.FromString(raw)
                    except DecodeError as exc:
                        raise BadRequest(
                            f"the request is not a valid {method} message: {exc}"
                        ) from None
                    payload = (await rpc.handler(request, call)).SerializeToString()
                    status = 200
                except ServiceError as exc:
                    status, failure = exc.status, exc
                except asyncio.CancelledError:
                    status = 499  # the client went away or its deadline passed
                    raise
                except Exception:
                    log.exception("unhandled error in gRPC %s", method)
                    failure = ServiceError("internal server error")
                finally:
                    if failure is not None:
                        logs.note_error(failure.type, failure.message)
                    record(status)
                    self.state.count_request(
                        call.model, rpc.endpoint, status, time.perf_counter() - started
                    )
            if failure is not None:  # outside the span: the status is an answer, not a crash
                await self._abort(context, failure)
            return payload

        return behavior

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext, exc: ServiceError) -> NoReturn:
        """End the call with `exc` as its gRPC status (context.abort raises)."""
        message = errors.details(exc.message)
        await context.abort(errors.code_of(exc), message, errors.trailers(exc, message))
        raise AssertionError("grpc.aio's abort returned")  # it raises AbortError

    @contextmanager
    def _observed(self, path: str, metadata: dict[str, str]) -> Iterator[Any]:
        """The call's log context and trace span; yields `record(status)`, which writes the
        access record and closes the span's attributes."""
        context = logs.RequestContext(
            logs.request_id_from(metadata.get(logs.REQUEST_ID_HEADER, "").encode("latin-1")),
            logs.trace_id_from(metadata.get("traceparent", "").encode("latin-1")),
        )
        token = logs.CURRENT.set(context)
        started = time.perf_counter()
        span: Any = None  # the SERVER span, when tracing is on
        spans = (
            tracing.server_span(
                {
                    "method": "POST",
                    "path": path,
                    "headers": [
                        (k.encode("latin-1"), v.encode("latin-1"))
                        for k, v in metadata.items()
                        if k in ("traceparent", "tracestate")
                    ],
                }
            )
            if tracing.enabled()
            else None
        )

        def record(status: int) -> None:
            if span is not None:
                span.set_attribute("rpc.system", "grpc")
                span.set_attribute("rpc.service", SERVICE)
                span.set_attribute("rpc.method", path.rsplit("/", 1)[1])
                tracing.end_server_span(span, path, "POST", status)
            self._log(path, context, status, time.perf_counter() - started)

        try:
            if spans is None:
                yield record
            else:
                with spans as span:
                    context.trace_id = tracing.current_trace_id() or context.trace_id
                    yield record
        finally:
            logs.CURRENT.reset(token)

    def _log(self, path: str, context: logs.RequestContext, status: int, seconds: float) -> None:
        ok_level = logs.access_ok_level(self.state.settings.log_format)
        logs.log_access(ok_level, context, "gRPC", path, path, status, seconds, context.model)
