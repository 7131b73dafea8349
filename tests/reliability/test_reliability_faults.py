"""Faults on a live server: an ONNX Runtime error inside a batch, bundles that fail validation at
start-up, and clients that disconnect mid-upload, mid-queue and mid-stream.

Each fault must stay contained: the poison request fails alone (its batch-mates get their
results), broken bundles are named by /readyz while healthy models serve, and a vanished client
frees its work (generation stops decoding for it) without any 5xx or a stuck worker.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from support.reliability_helpers import poison_classifier_graph, write_classifier
from support.service_helpers import b64, png_bytes, start_server

from bench.live_server import LiveServer

CLASSIFY = "/v1/models/fashion-classifier/classify"


def _image(value: int) -> dict:
    return {"image": b64(png_bytes(np.full((28, 28), value, np.uint8)))}


@pytest.fixture(scope="module")
def fault_server(full_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    """Healthy bundles + a poison classifier + three broken bundles, one server."""
    repo = tmp_path_factory.mktemp("fault_repo") / "repo"
    shutil.copytree(full_repository, repo)
    write_classifier(repo, "poison-classifier", poison_classifier_graph())
    # 1: model.onnx no longer matches the manifest's sha256 (a corrupted copy)
    shutil.copytree(repo / "fashion-classifier", repo / "corrupt-classifier")
    manifest = repo / "corrupt-classifier" / "1" / "manifest.json"
    manifest.write_text(
        manifest.read_text().replace('"fashion-classifier"', '"corrupt-classifier"')
    )
    with (repo / "corrupt-classifier" / "1" / "model.onnx").open("ab") as f:
        f.write(b"\0garbage")
    # 2: manifest.json is not JSON
    (repo / "bad-manifest" / "1").mkdir(parents=True)
    (repo / "bad-manifest" / "1" / "manifest.json").write_text("{not json")
    (repo / "bad-manifest" / "1" / "model.onnx").write_bytes(b"\0")
    # 3: a model folder without a version
    (repo / "no-version").mkdir()
    server = start_server(
        repo,
        {
            "NEUTRENO_MAX_QUEUE_DELAY_MS": "1000",
            "NEUTRENO_MAX_BATCH_SIZE": "16",
            "NEUTRENO_LOG_LEVEL": "error",
        },
    )
    try:
        server.wait_ready(ready=False)
        yield server
    finally:
        assert server.stop() == 0


def test_broken_bundles_are_named_and_healthy_models_serve(fault_server: LiveServer) -> None:
    with httpx.Client(base_url=fault_server.url, timeout=30) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        reasons = " ".join(body["reasons"])
        for broken in ("corrupt-classifier", "bad-manifest", "no-version"):
            assert broken in reasons and body["models"][broken] != "ready"
        assert "sha256" in body["models"]["corrupt-classifier"]
        for healthy in ("fashion-classifier", "fashion-segmenter", "tiny-lm", "poison-classifier"):
            assert body["models"][healthy] == "ready"
        assert c.get("/v2/health/ready").status_code == 503
        assert c.get("/healthz").status_code == 200  # alive, so not restarted in a loop
        listed = {m["id"] for m in c.get("/v1/models").json()["data"]}
        assert "corrupt-classifier" not in listed and "fashion-classifier" in listed
        broken = c.post("/v1/models/corrupt-classifier/classify", json=_image(0))
        assert broken.status_code == 503 and broken.json()["error"]["type"] == "model_not_ready"
        assert c.post(CLASSIFY, json=_image(0)).status_code == 200
        gen = c.post(
            "/v1/completions", json={"model": "tiny-lm", "prompt": "In the", "max_tokens": 3}
        )
        assert gen.status_code == 200 and gen.json()["choices"][0]["finish_reason"]


def test_ort_error_inside_a_batch_fails_only_the_poison_request(fault_server: LiveServer) -> None:
    """Nine requests land in one batch (1 s queue delay); one is a white image that makes
    the poison model's Gather index go out of bounds inside ONNX Runtime."""
    url = fault_server.url + "/v1/models/poison-classifier/classify"
    values = [0, 40, 80, 120, 255, 160, 200, 10, 30]  # 255 -> all pixels > 1.5 -> ORT error

    def call(value: int) -> httpx.Response:
        return httpx.post(url, json=_image(value), timeout=30)

    five_xx = fault_server.count_5xx()  # readiness 503s of the broken bundles so far
    rows0, batches0 = fault_server.batch_totals("poison-classifier")
    responses = asyncio.run(_concurrently(url, [_image(v) for v in values]))
    rows1, batches1 = fault_server.batch_totals("poison-classifier")
    assert rows1 - rows0 == len(values) and batches1 - batches0 <= 3  # they shared batches
    for value, r in zip(values, responses, strict=True):
        if value == 255:
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["type"] == "invalid_request" and "cannot process" in error["message"]
        else:
            assert r.status_code == 200, r.text
            assert len(r.json()["predictions"]) == 5
    # the batcher keeps serving: a poison request alone gets 503 (nothing to blame it on
    # but the model), then healthy requests succeed again
    alone = call(255)
    assert alone.status_code in (400, 503) and "error" in alone.json()
    assert call(0).status_code == 200
    assert fault_server.count_5xx() - five_xx <= 1  # at most that lone, retryable 503


async def _concurrently(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30) as client:
        return await asyncio.gather(*(client.post(url, json=b) for b in bodies))


def _raw_request(port: int, head: str, body: bytes, read: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.encode() + body)
        return s.recv(65536) if read else b""


def test_client_disconnects_are_contained(fault_server: LiveServer) -> None:
    port = fault_server.port
    statuses_before = fault_server.status_counts()
    # 1. mid-upload: Content-Length promises 100 kB, 1 kB arrives, the socket closes
    head = (
        "POST /v1/models/fashion-classifier/classify HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    )
    for _ in range(20):
        _raw_request(port, head, b'{"image": "' + b"A" * 1000)
    # 2. queued in the batcher (1 s delay), then gone before the batch runs
    body = json.dumps(_image(7)).encode()
    head = (
        "POST /v1/models/fashion-classifier/classify HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    for _ in range(20):
        _raw_request(port, head, body)
    # 3. mid-stream: read the first SSE event, then close; decoding must stop for it
    tokens_before, closed_before = _tokens(fault_server), _closed_completions(fault_server)
    asyncio.run(_abandon_streams(fault_server, count=6))
    # 4. a non-streaming completion abandoned while it generates
    req = json.dumps(
        {"model": "tiny-lm", "prompt": "And", "max_tokens": 200, "ignore_eos": True}
    ).encode()
    head = (
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(req)}\r\n\r\n"
    )
    for _ in range(4):
        _raw_request(port, head, req)
    _wait_for_idle_generation(fault_server)
    # 10 abandoned requests x 200 tokens would be 2000 tokens. How many are made before each
    # cancel lands depends on the host's speed (1,206 on a loaded 2-core CI run), so the bound
    # fails only when cancels are lost: at least 3 of the 10 requests ran to the end.
    assert _tokens(fault_server) - tokens_before < 1600
    # every abandoned non-streaming completion was answered 499 (its sequence cancelled)
    assert _closed_completions(fault_server) - closed_before >= 4
    # the service is intact: no 5xx from any of this, everything still answers
    with httpx.Client(base_url=fault_server.url, timeout=30) as c:
        assert c.post(CLASSIFY, json=_image(3)).status_code == 200
        done = c.post(
            "/v1/completions",
            json={"model": "tiny-lm", "prompt": "In the", "max_tokens": 4, "ignore_eos": True},
        )
        assert done.status_code == 200
        assert done.json()["usage"]["completion_tokens"] == 4
    after = fault_server.status_counts()
    new_5xx = sum(after.get(s, 0) - statuses_before.get(s, 0) for s in after if s[0] == "5")
    assert new_5xx == 0, (statuses_before, after, fault_server.output()[-3000:])


async def _abandon_streams(server: LiveServer, count: int) -> None:
    payload = {
        "model": "tiny-lm",
        "prompt": "In the beginning",
        "max_tokens": 200,
        "ignore_eos": True,
        "stream": True,
    }

    async def one(client: httpx.AsyncClient) -> None:
        async with client.stream("POST", "/v1/completions", json=payload) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    break  # leave after the first token: the context manager closes

    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        await asyncio.gather(*(one(client) for _ in range(count)))


def _wait_for_idle_generation(server: LiveServer, timeout: float = 10.0) -> None:
    """Abandoned sequences leave the running and waiting sets."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = sum(
            v
            for labels, v in server.samples("neutreno_running_sequences")
            if labels.get("model") == "tiny-lm"
        )
        waiting = sum(
            v
            for labels, v in server.samples("neutreno_waiting_sequences")
            if labels.get("model") == "tiny-lm"
        )
        if running == 0 and waiting == 0:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("abandoned sequences are still running")


def _tokens(server: LiveServer) -> float:
    return sum(
        v
        for labels, v in server.samples("neutreno_generated_tokens")
        if labels.get("model") == "tiny-lm"
    )


def _closed_completions(server: LiveServer) -> float:
    """Completions answered 499: the client left and its sequences were cancelled."""
    return sum(
        v
        for labels, v in server.samples("neutreno_requests")
        if labels.get("endpoint") == "/v1/completions" and labels.get("status") == "499"
    )
