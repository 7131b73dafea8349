"""OpenTelemetry tracing, configured only by the standard `OTEL_*` environment variables.

On when `OTEL_TRACES_EXPORTER` names exporters (`otlp` = OTLP over HTTP/protobuf, `console`;
comma-separated), or, with it unset, when an OTLP endpoint is set
(`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); off with
`OTEL_TRACES_EXPORTER=none`, `OTEL_SDK_DISABLED=true` or nothing set. The SDK reads the rest
itself (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`,
exporter headers and timeouts). When off the SDK is not imported, no middleware is installed and
every hook returns at once: tracing costs nothing.

Spans: one SERVER span per HTTP request (child of the caller's W3C `traceparent`); under it,
recorded after the fact with their real times, `queue wait` and `batch run` (with `batch.size`)
for vision requests, and `queue wait`, `prefill` and `decode` for each completion sequence, the
decode steps summarised in one span (step count, tokens, mean batch size), not one per token.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import Scope

log = logging.getLogger("neutreno.service")

_tracer: trace.Tracer | None = None
_provider: Any = None  # the SDK TracerProvider when tracing is on
_propagator = TraceContextTextMapPropagator()


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """The trace exporters the OTEL_* variables ask for; empty = tracing off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = env.get("OTEL_TRACES_EXPORTER")
    if names is None:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    return [n for n in (part.strip().lower() for part in names.split(",")) if n and n != "none"]


def install(provider: Any) -> None:
    """Trace with this SDK TracerProvider (None turns tracing off)."""
    global _tracer, _provider
    _provider = provider
    _tracer = None if provider is None else provider.get_tracer("neutreno.service")


def configure_from_env(env: Mapping[str, str] | None = None) -> None:
    """Install a provider with the exporters the environment asks for, unless one is already
    installed (a test's) or tracing is off."""
    names = exporter_names(os.environ if env is None else env)
    if _provider is not None or not names:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    provider = TracerProvider(resource=Resource.create())
    for name in names:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        else:
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported here (otlp, console, none)", name)
    install(provider)


def enabled() -> bool:
    return _tracer is not None


def capture() -> otel_context.Context | None:
    """The caller's trace context, to parent spans recorded later elsewhere; None when off."""
    return None if _tracer is None else otel_context.get_current()


def carrier() -> dict[str, str]:
    """The current trace context as W3C headers, to cross into the engine process (empty when
    tracing is off or no span is active)."""
    if _tracer is None:
        return {}
    headers: dict[str, str] = {}
    _propagator.inject(headers)
    return headers


@contextmanager
def attached(headers: Mapping[str, str] | None) -> Iterator[None]:
    """Make a front end's trace context (from `carrier`) current in the engine process, so the
    spans recorded there (queue wait, batch run, prefill, decode) join the request's trace."""
    if _tracer is None or not headers:
        yield
        return
    token = otel_context.attach(_propagator.extract(headers))
    try:
        yield
    finally:
        otel_context.detach(token)


def current_trace_id() -> str | None:
    """Hex trace id of the active span (None when off or outside a span)."""
    if _tracer is None:
        return None
    span_context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(span_context.trace_id) if span_context.is_valid else None


def _epoch_ns(perf: float, now_perf: float, now_ns: int) -> int:
    """A time.perf_counter() reading as epoch nanoseconds (what span times are)."""
    return now_ns - int((now_perf - perf) * 1e9)


def _span(
    name: str, parent: otel_context.Context, start: int, end: int, attributes: dict[str, Any]
) -> None:
    assert _tracer is not None
    span = _tracer.start_span(name, context=parent, start_time=start, attributes=attributes)
    span.end(end_time=end)


class Queued(Protocol):
    """A queued vision request as the batcher holds it."""

    trace: Any
    enqueued: float
    rows: int


def record_batch(model: str, batch: Iterable[Queued], started: float) -> None:
    """`queue wait` and `batch run` spans under each traced request of a batch that ran from
    `started` (perf_counter) until now."""
    if _tracer is None:
        return
    batch = list(batch)
    now_perf, now_ns = time.perf_counter(), time.time_ns()
    begin = _epoch_ns(started, now_perf, now_ns)
    attributes = {
        "neutreno.model": model,
        "neutreno.batch.size": sum(r.rows for r in batch),
        "neutreno.batch.requests": len(batch),
    }
    for req in batch:
        if req.trace is not None:
            _span(
                "queue wait",
                req.trace,
                _epoch_ns(req.enqueued, now_perf, now_ns),
                begin,
                {"neutreno.model": model},
            )
            _span("batch run", req.trace, begin, now_ns, attributes)


class GenerationTrace:
    """Timings of one completion sequence, emitted as spans when it ends: `queue wait`,
    `prefill` (its batch size) and one `decode` summary of every later step."""

    def __init__(self, parent: otel_context.Context, enqueued: float) -> None:
        self.parent, self.enqueued = parent, enqueued
        self.model = ""
        self.prefill: tuple[float, float, int] | None = None
        self.decode_start = self.decode_end = 0.0
        self.steps = self.rows = 0
        self.ended = False

    def run(self, model: str, started: float, ended: float, rows: int) -> None:
        """One ORT run this sequence was part of (the first is its prefill)."""
        self.model = model
        if self.prefill is None:
            self.prefill = (started, ended, rows)
            return
        if not self.steps:
            self.decode_start = started
        self.decode_end, self.steps, self.rows = ended, self.steps + 1, self.rows + rows

    def end(self, prompt_tokens: int, tokens: int, reason: str) -> None:
        """Emit the spans (once)."""
        if self.ended or _tracer is None:
            return
        self.ended = True
        now_perf, now_ns = time.perf_counter(), time.time_ns()

        def ns(t: float) -> int:
            return _epoch_ns(t, now_perf, now_ns)

        base = {"neutreno.model": self.model}
        admitted = now_perf if self.prefill is None else self.prefill[0]
        _span("queue wait", self.parent, ns(self.enqueued), ns(admitted), base)
        if self.prefill is not None:
            start, stop, rows = self.prefill
            _span(
                "prefill",
                self.parent,
                ns(start),
                ns(stop),
                {**base, "neutreno.batch.size": rows, "neutreno.prompt_tokens": prompt_tokens},
            )
        if self.steps:
            _span(
                "decode",
                self.parent,
                ns(self.decode_start),
                ns(self.decode_end),
                {
                    **base,
                    "neutreno.decode.steps": self.steps,
                    "neutreno.tokens": tokens,
                    "neutreno.batch.mean_size": self.rows / self.steps,
                    "neutreno.finish_reason": reason,
                },
            )


def generation_trace(enqueued: float) -> GenerationTrace | None:
    """A recorder for a new sequence, parented on the current request; None when off."""
    return None if _tracer is None else GenerationTrace(otel_context.get_current(), enqueued)


def record_runs(model: str, traces: Iterable[GenerationTrace | None], started: float) -> None:
    """A generation run (prefill or decode step) from `started` until now, for its rows."""
    if _tracer is None:
        return
    traces = list(traces)
    ended = time.perf_counter()
    for recorder in traces:
        if recorder is not None:
            recorder.run(model, started, ended, len(traces))


@contextmanager
def server_span(scope: Scope) -> Iterator[trace.Span]:
    """The SERVER span of one HTTP request, current while the app runs, continuing the
    caller's W3C `traceparent`; `end_server_span` names it by route and records the status."""
    assert _tracer is not None
    carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    with _tracer.start_as_current_span(
        f"{scope['method']} {scope['path']}",
        context=_propagator.extract(carrier),
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": scope["method"], "url.path": scope["path"]},
    ) as span:
        yield span


def end_server_span(span: trace.Span, route: str | None, method: str, status: int) -> None:
    if route:
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(trace.Status(trace.StatusCode.ERROR))
