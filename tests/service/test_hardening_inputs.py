"""Hardening round 2 (issue 28), request fields in-process: /tokenize and /detokenize bounded
as completions are (case 5), every completion field bounded and valid Unicode (case 6),
canonical logit_bias keys (case 13), and JSON log lines that no field can split (case 11)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from support.generation_helpers import NAME, add_lm
from support.service_helpers import make_settings

from service import create_app
from service.logs import JsonFormatter

CONTEXT = 256  # the tiny LM's
RAW = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def app_client(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    repo = add_lm(tmp_path_factory.mktemp("lm_repo"), built)
    with TestClient(create_app(make_settings(repo))) as client:
        yield client


def _completion(client: TestClient, text: str) -> dict:
    """POST a raw JSON completion body (so escapes such as lone surrogates reach the parser)."""
    r = client.post("/v1/completions", content=text, headers=RAW)
    return {"status": r.status_code, **r.json()}


def test_tokenize_bounded_like_completions(app_client: TestClient) -> None:
    """Issue: an 8 MiB /tokenize prompt took 12-14 s and +1.7 GB, since completions cap
    prompts and tokenize did not. Now: 413 on characters before tokenizing, 413 on tokens."""
    huge = app_client.post("/tokenize", json={"model": NAME, "prompt": "and " * 500_000})
    assert huge.status_code == 413 and "characters" in huge.json()["error"]["message"]
    many = app_client.post("/tokenize", json={"model": NAME, "prompt": "a b " * CONTEXT})
    assert many.status_code == 413 and "tokens" in many.json()["error"]["message"]
    fits = app_client.post("/tokenize", json={"model": NAME, "prompt": "and the " * 10})
    assert fits.status_code == 200 and fits.json()["count"] <= CONTEXT
    long = app_client.post("/detokenize", json={"model": NAME, "tokens": [1] * (CONTEXT + 1)})
    assert long.status_code == 413
    assert (
        app_client.post("/detokenize", json={"model": NAME, "tokens": [1] * 8}).status_code == 200
    )


@pytest.mark.parametrize(
    "fields",
    [
        '"stop": ["\\ud800"]',
        '"stop": "ok\\udfff"',
        '"user": "\\ud800"',
        f'"top_k": {2**64}',
        f'"max_tokens": {2**64}',
        f'"min_tokens": {2**64}',
        f'"max_tokens": {2**31}',
    ],
)
def test_completion_fields_422_never_500(app_client: TestClient, fields: str) -> None:
    """Issue: `stop: ["\\ud800"]` or `top_k: 2**64` answered 500 with two tracebacks and left
    a pending future in the engine client: now the schema refuses them (422) before anything
    is tokenized or sent."""
    body = _completion(app_client, f'{{"model": "{NAME}", "prompt": "and", {fields}}}')
    assert body["status"] == 422, body
    assert body["error"]["type"] == "validation_error"


def test_logit_bias_keys_canonical(app_client: TestClient) -> None:
    """Issue: keys "5" and "05" were both accepted and added up past the +-100 bound."""
    for bias in ({"5": 100, "05": 100}, {"05": 1}, {"+5": 1}, {"5 ": 1}):
        r = app_client.post(
            "/v1/completions", json={"model": NAME, "prompt": "and", "logit_bias": bias}
        )
        assert r.status_code == 422, (bias, r.text)
        assert "leading zeros" in r.json()["error"]["message"]
    ok = {"model": NAME, "prompt": "and", "max_tokens": 2, "logit_bias": {"0": 5, "10": -5}}
    assert app_client.post("/v1/completions", json=ok).status_code == 200


def test_json_log_lines_escape_every_line_separator() -> None:
    """Issue: a model name with U+2028 / U+0085 was written raw in the JSON `model` field, so
    line-oriented shippers split one record in two (log injection)."""
    hostile = 'x\u2028{"level": "critical"}\u0085y\u2029z\ud800'
    record = logging.LogRecord("neutreno.access", logging.WARNING, __file__, 1, hostile, (), None)
    record.model = hostile
    record.error = hostile
    line = JsonFormatter().format(record)
    assert not any(c in line for c in "\u2028\u2029\u0085\n\r")
    line.encode("utf-8")  # no lone surrogate left either
    parsed = json.loads(line)
    assert parsed["model"] == parsed["message"] == parsed["error"] == hostile
