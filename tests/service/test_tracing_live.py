"""Tracing on a live `neutreno serve`, configured by OTEL_* variables only: the console exporter
(8 concurrent requests batched together, each in its own trace) and the OTLP/HTTP exporter
posting to a receiver that decodes the protobuf export requests."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from support.generation_helpers import NAME
from support.service_helpers import b64, png_bytes, start_server

CLASSIFY = "/v1/models/fashion-classifier/classify"


def traceparent(trace_id: int) -> dict[str, str]:
    return {"traceparent": f"00-{trace_id:032x}-{0xABCDEF:016x}-01"}


def console_spans(output: str) -> list[dict]:
    """The span objects ConsoleSpanExporter printed (indented JSON) among other output."""
    decoder, spans, at = json.JSONDecoder(), [], 0
    while (at := output.find('{\n    "name"', at)) >= 0:
        span, at = decoder.raw_decode(output, at)
        spans.append(span)
    return spans


def test_console_exporter_shows_batched_requests(lm_repository: Path) -> None:
    live = start_server(
        lm_repository,
        {
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_SERVICE_NAME": "neutreno-console-test",
            "NEUTRENO_MAX_QUEUE_DELAY_MS": "300",
        },
    )
    image = {"image": b64(png_bytes(np.zeros((28, 28), np.uint8)))}
    try:
        live.wait_ready()
        with ThreadPoolExecutor(8) as pool:
            codes = list(
                pool.map(
                    lambda i: (
                        httpx.post(
                            live.url + CLASSIFY, json=image, headers=traceparent(i + 1), timeout=30
                        ).status_code
                    ),
                    range(8),
                )
            )
        assert codes == [200] * 8
    finally:
        live.stop()
    spans = console_spans(live.output())
    runs = [s for s in spans if s["name"] == "batch run"]
    traces = {int(s["context"]["trace_id"], 16) for s in runs}
    assert traces == set(range(1, 9)), "each request keeps its own trace"
    assert max(s["attributes"]["neutreno.batch.size"] for s in runs) > 1, "nothing batched"
    server = [
        s
        for s in spans
        if s["kind"] == "SpanKind.SERVER" and int(s["context"]["trace_id"], 16) in traces
    ]
    assert len(server) == 8 and all(s["parent_id"] == f"0x{0xABCDEF:016x}" for s in server)
    assert {s["resource"]["attributes"]["service.name"] for s in spans} == {"neutreno-console-test"}


class Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace endpoint that keeps what it is sent."""

    received: list[ExportTraceServiceRequest] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            Receiver.received.append(ExportTraceServiceRequest.FromString(body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Receiver.received = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_otlp_exporter_sends_completion_spans(lm_repository: Path, receiver: str) -> None:
    live = start_server(
        lm_repository,
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver,
            "OTEL_SERVICE_NAME": "neutreno-otlp-test",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    )
    try:
        live.wait_ready()
        r = httpx.post(
            live.url + "/v1/completions",
            headers=traceparent(0x77),
            timeout=30,
            json={"model": NAME, "prompt": "In the", "max_tokens": 4, "ignore_eos": True},
        )
        assert r.status_code == 200
    finally:
        assert live.stop() == 0  # shutdown flushes what the batch processor still holds
    spans = [
        (resource, span)
        for request in Receiver.received
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    ours = {span.name: span for _, span in spans if span.trace_id == (0x77).to_bytes(16, "big")}
    assert {"POST /v1/completions", "queue wait", "prefill", "decode"} <= set(ours)
    decode = {a.key: a.value for a in ours["decode"].attributes}
    assert decode["neutreno.decode.steps"].int_value == 3
    assert decode["neutreno.tokens"].int_value == 4
    services = {
        a.value.string_value
        for resource, _ in spans
        for a in resource.resource.attributes
        if a.key == "service.name"
    }
    assert services == {"neutreno-otlp-test"}
