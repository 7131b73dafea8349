"""schemathesis against the live service's own /openapi.json: every route, >= 1000 requests.

The schemathesis CLI generates requests from the schema (examples, coverage and fuzzing phases;
positive and negative data) and checks every response: no 5xx, status code documented, content
type and headers documented, body valid against the documented schema, and schema-violating
requests rejected. Path `name` and body `model` draw from the real model names most of the time
(else everything would be a 404), and JSON `image` fields often carry real PNGs, so the
generated requests reach inference and the response schemas of success paths get checked too.
The request count and the 5xx count come from the server's own neutreno_requests_total.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from support.service_helpers import png_bytes, start_server

KEY = "schemathesis-key"
MODELS = ["fashion-classifier", "fashion-segmenter", "tiny-lm", "no-such-model"]
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
]
MIN_REQUESTS = 1000


def _images() -> list[str]:
    rng = np.random.default_rng(0)
    arrays = [
        rng.integers(0, 256, (28, 28), dtype=np.uint8),
        rng.integers(0, 256, (64, 64), dtype=np.uint8),
        rng.integers(0, 256, (3, 90), dtype=np.uint8),
        np.zeros((1, 1), np.uint8),
    ]
    return [base64.b64encode(png_bytes(a)).decode() for a in arrays]


def _config(path: Path) -> Path:
    def values(items: list[str]) -> str:
        return json.dumps(items)

    path.write_text(f"""
[dictionaries.models]
values = {values(MODELS)}

[dictionaries.images]
values = {values(_images())}

[parameters."path.name"]
dictionary = "models"
probability = 0.85

[parameters."body.model"]
dictionary = "models"
probability = 0.85

[parameters."body.image"]
dictionary = "images"
probability = 0.6
""")
    return path


@pytest.mark.slow
def test_schemathesis_every_route_no_5xx_no_schema_violation(
    full_repository: Path, tmp_path: Path
) -> None:
    server = start_server(
        full_repository, {"NEUTRENO_API_KEY": KEY, "NEUTRENO_MAX_QUEUE_DELAY_MS": "1"}
    )
    try:
        server.wait_ready()
        schema = httpx.get(server.url + "/openapi.json", timeout=10).json()
        routes = {f"{m.upper()} {p}" for p, ops in schema["paths"].items() for m in ops}
        before = sum(server.status_counts().values())
        report = tmp_path / "report.json"
        cmd = [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(_config(tmp_path / "schemathesis.toml")),
            "run",
            server.url + "/openapi.json",
            "-H",
            f"Authorization: Bearer {KEY}",
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            "120",
            "--seed",
            "20261129",
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--no-color",
            "--report",
            "json",
            "--report-json-path",
            str(report),
        ]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        result = json.loads(report.read_text())
        after = sum(server.status_counts().values()) - 1  # minus the scrape above
        five_xx = server.count_5xx()
        ready = httpx.get(server.url + "/readyz", timeout=10).status_code
    finally:
        code = server.stop()
    tail = run.stdout[-6000:]
    assert result["operations"]["tested"] == result["operations"]["selected"] == len(routes), tail
    assert not result["failures"] and not result["errors"], tail
    assert run.returncode == 0, tail
    assert after - before >= MIN_REQUESTS, f"only {after - before} requests\n{tail}"
    assert five_xx == 0, server.output()[-4000:]
    assert ready == 200 and code == 0
    for name in (
        "POST /v1/completions",
        "POST /v1/models/{name}/classify",
        "POST /v2/models/{name}/infer",
    ):
        assert name in routes
    print(
        f"schemathesis: {after - before} requests over {len(routes)} operations, "
        f"{result['test_cases']['generated']} generated cases, 0 failures"
    )
