"""Structured logs on a live server (NEUTRENO_LOG_FORMAT=json): one JSON object per line, an
access record per request with request_id (echoed as X-Request-Id), trace_id, model, route,
status and duration_ms, and error responses recorded with their type."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from support.generation_helpers import NAME
from support.service_helpers import FASHION, b64, png_bytes, start_server

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def records(lm_repository: Path) -> tuple[list[dict], dict[str, httpx.Response]]:
    """(every JSON log record, the responses by name) of one server session."""
    live = start_server(
        lm_repository, {"NEUTRENO_LOG_FORMAT": "json", "NEUTRENO_LOG_LEVEL": "info"}
    )
    try:
        live.wait_ready()
        with httpx.Client(base_url=live.url, timeout=30) as c:
            image = {"image": b64(png_bytes(np.zeros((28, 28), np.uint8)))}
            responses = {
                "health": c.get("/healthz", headers={"X-Request-Id": "req-abc.123"}),
                "classify": c.post(
                    "/v1/models/fashion-classifier/classify",
                    json=image,
                    headers={"traceparent": TRACEPARENT},
                ),
                "complete": c.post(
                    "/v1/completions", json={"model": NAME, "prompt": "In the", "max_tokens": 2}
                ),
                "unknown": c.post(
                    "/v1/completions",
                    json={"model": "nope", "prompt": "a"},
                    headers={"X-Request-Id": "bad id\twith spaces"},
                ),
                "schema": c.post(
                    "/v1/completions", json={"model": NAME, "prompt": "a", "temperature": 9}
                ),
            }
    finally:
        live.stop()
    lines = [line for line in live.output().splitlines() if line.strip()]
    return [json.loads(line) for line in lines], responses


def access(records: list[dict], request_id: str) -> dict:
    found = [
        r for r in records if r["logger"] == "neutreno.access" and r.get("request_id") == request_id
    ]
    assert len(found) == 1, found
    return found[0]


def test_every_line_is_one_json_object(records: tuple[list[dict], dict]) -> None:
    lines, _ = records
    assert len(lines) >= 8
    assert all({"time", "level", "logger", "message"} <= set(r) for r in lines)
    assert all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", r["time"]) for r in lines
    )
    assert any("Uvicorn running" in r["message"] for r in lines)  # uvicorn's records too


def test_access_records(records: tuple[list[dict], dict]) -> None:
    lines, responses = records
    assert responses["health"].headers["x-request-id"] == "req-abc.123"
    health = access(lines, "req-abc.123")
    assert health["route"] == "/healthz" and health["status"] == 200
    assert health["level"] == "info" and health["method"] == "GET" and health["duration_ms"] > 0
    classify = responses["classify"]
    assert (
        classify.status_code == 200
        and set(classify.json()["predictions"][0]) == {"index", "label", "score"}
        and classify.json()["predictions"][0]["label"] in FASHION
    )
    generated = classify.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    record = access(lines, generated)
    assert record["trace_id"] == TRACE and record["model"] == "fashion-classifier"
    assert record["route"] == "/v1/models/{name}/classify"
    completion = access(lines, responses["complete"].headers["x-request-id"])
    assert completion["model"] == NAME and completion["route"] == "/v1/completions"
    assert "trace_id" not in completion  # no traceparent, tracing off


def test_error_records(records: tuple[list[dict], dict]) -> None:
    lines, responses = records
    unknown = responses["unknown"]
    assert unknown.status_code == 404
    assert re.fullmatch(r"[0-9a-f]{32}", unknown.headers["x-request-id"])  # unsafe id replaced
    record = access(lines, unknown.headers["x-request-id"])
    assert record["level"] == "warning" and record["status"] == 404
    assert record["model"] == "nope" and record["error_type"] == "model_not_found"
    assert "no model named 'nope'" in record["error"]
    schema = access(lines, responses["schema"].headers["x-request-id"])
    assert schema["status"] == 422 and schema["error_type"] == "validation_error"
    assert "temperature" in schema["error"]


def test_text_format_carries_the_request_id(lm_repository: Path) -> None:
    """Text logs: successful requests only at debug, errors at warning, each with its id."""
    live = start_server(lm_repository, {"NEUTRENO_LOG_LEVEL": "info"})
    try:
        live.wait_ready()
        ok = httpx.get(live.url + "/healthz", headers={"X-Request-Id": "ok-1"})
        bad = httpx.post(
            live.url + "/tokenize",
            json={"model": "nope", "prompt": "a"},
            headers={"X-Request-Id": "bad-2"},
        )
    finally:
        live.stop()
    assert ok.headers["x-request-id"] == "ok-1" and bad.status_code == 404
    lines = live.output().splitlines()
    assert not any("[ok-1]" in line for line in lines)
    [line] = [line for line in lines if "[bad-2]" in line]
    assert re.fullmatch(
        r"\S+ \S+ WARNING neutreno\.access \[bad-2\] POST /tokenize 404 "
        r"[\d.]+ ms: no model named 'nope'.*",
        line,
    ), line
    assert any("INFO uvicorn.error [-] Uvicorn running" in line for line in lines)
