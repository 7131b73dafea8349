"""Tracing in-process with the real OpenTelemetry SDK and its in-memory exporter: the request
span continues the caller's traceparent; queue wait, batch run, prefill and decode spans sit
under it with their batch sizes; nothing is installed when the OTEL_* variables leave it off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from support.generation_helpers import NAME
from support.service_helpers import b64, make_settings, png_bytes

from service import create_app, tracing
from service.frontend.middleware import TracingMiddleware

TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT = 0x00F067AA0BA902B7
HEADERS = {"traceparent": f"00-{TRACE:032x}-{PARENT:016x}-01"}


@pytest.mark.parametrize(
    "env, names",
    [
        ({}, []),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ["otlp", "console"]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, []),
    ],
)
def test_exporters_from_the_standard_variables(env: dict, names: list[str]) -> None:
    assert tracing.exporter_names(env) == names


def test_off_installs_nothing(repository: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(Runs before the module's traced app exists.)"""
    for name in (
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)
    app = create_app(make_settings(repository))
    assert not tracing.enabled() and tracing.capture() is None
    assert tracing.current_trace_id() is None and tracing.generation_trace(0.0) is None
    assert TracingMiddleware not in [m.cls for m in app.user_middleware]


@pytest.fixture(scope="module")
def traced(lm_repository: Path) -> Iterator[tuple[TestClient, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        with TestClient(create_app(make_settings(lm_repository))) as client:
            yield client, exporter
    finally:
        tracing.install(None)


def request_spans(exporter: InMemorySpanExporter) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The one server span of TRACE and the spans under it."""
    spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == TRACE]
    server = [s for s in spans if s.kind == SpanKind.SERVER]
    assert len(server) == 1, [s.name for s in spans]
    children = [s for s in spans if s.parent and s.parent.span_id == server[0].context.span_id]
    return server[0], children


def test_vision_request_spans(traced: tuple[TestClient, InMemorySpanExporter]) -> None:
    client, exporter = traced
    exporter.clear()
    image = {"image": b64(png_bytes(np.zeros((28, 28), np.uint8)))}
    r = client.post("/v1/models/fashion-classifier/classify", json=image, headers=HEADERS)
    assert r.status_code == 200
    server, children = request_spans(exporter)
    assert server.parent.span_id == PARENT and server.parent.is_remote
    assert server.name == "POST /v1/models/{name}/classify"
    assert server.attributes["http.response.status_code"] == 200
    by_name = {s.name: s for s in children}
    assert set(by_name) == {"queue wait", "batch run"}
    assert by_name["batch run"].attributes["neutreno.batch.size"] == 1
    assert by_name["queue wait"].end_time <= by_name["batch run"].start_time
    assert server.start_time <= by_name["queue wait"].start_time
    assert by_name["batch run"].end_time <= server.end_time


def test_completion_spans(traced: tuple[TestClient, InMemorySpanExporter]) -> None:
    client, exporter = traced
    exporter.clear()
    r = client.post(
        "/v1/completions",
        headers=HEADERS,
        json={
            "model": NAME,
            "prompt": "In the beginning",
            "max_tokens": 6,
            "ignore_eos": True,
            "temperature": 0,
        },
    )
    assert r.status_code == 200
    server, children = request_spans(exporter)
    by_name = {s.name: s for s in children}
    assert set(by_name) == {"queue wait", "prefill", "decode"}
    prefill, decode = by_name["prefill"].attributes, by_name["decode"].attributes
    assert prefill["neutreno.batch.size"] == 1
    assert prefill["neutreno.prompt_tokens"] == r.json()["usage"]["prompt_tokens"]
    assert decode["neutreno.decode.steps"] == 5 and decode["neutreno.tokens"] == 6
    assert decode["neutreno.batch.mean_size"] == 1.0
    assert decode["neutreno.finish_reason"] == "length"
    assert by_name["queue wait"].end_time <= by_name["prefill"].start_time
    assert by_name["prefill"].end_time <= by_name["decode"].start_time
    assert by_name["decode"].end_time <= server.end_time


def test_error_status_and_routes_without_models(
    traced: tuple[TestClient, InMemorySpanExporter],
) -> None:
    client, exporter = traced
    exporter.clear()
    assert client.get("/healthz", headers=HEADERS).status_code == 200
    server, children = request_spans(exporter)
    assert server.name == "GET /healthz" and not children
    exporter.clear()
    assert (
        client.post(
            "/v1/completions", headers=HEADERS, json={"model": "nope", "prompt": "a"}
        ).status_code
        == 404
    )
    server, _ = request_spans(exporter)
    assert server.attributes["http.response.status_code"] == 404


def test_log_records_carry_the_span_trace_id(
    traced: tuple[TestClient, InMemorySpanExporter], caplog: pytest.LogCaptureFixture
) -> None:
    client, exporter = traced
    exporter.clear()
    with caplog.at_level("DEBUG", logger="neutreno.access"):
        r = client.get("/healthz")  # no traceparent: the service starts the trace
    [span] = exporter.get_finished_spans()
    [record] = [r for r in caplog.records if r.name == "neutreno.access"]
    assert record.trace_id == f"{span.context.trace_id:032x}"
    assert record.request_id == r.headers["x-request-id"]
