"""A real `neutreno serve` process: endpoints, error statuses, start-up checks and SIGTERM drain."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from support.service_helpers import ROOT, b64, make_settings, png_bytes, start_server

from bench.live_server import LiveServer
from service import create_app

KEY = {"Authorization": "Bearer live-key"}


@pytest.fixture(scope="module")
def server(repository: Path):
    live = start_server(repository, {"NEUTRENO_API_KEY": "live-key"})
    try:
        live.wait_ready()
        yield live
    finally:
        live.stop()


def test_live_endpoints(server: LiveServer, fashion) -> None:
    with httpx.Client(base_url=server.url, headers=KEY, timeout=10) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").json()["status"] == "ok"
        assert {m["id"] for m in c.get("/v1/models").json()["data"]} == {
            "fashion-classifier",
            "fashion-segmenter",
        }
        image = png_bytes(fashion[0][0])
        r = c.post(
            "/v1/models/fashion-classifier/classify",
            files={"file": ("x.png", image, "image/png")},
            data={"top_k": "2"},
        )
        assert r.status_code == 200 and len(r.json()["predictions"]) == 2
        seg = c.post("/v1/models/fashion-segmenter/segment", json={"image": b64(image)})
        assert seg.status_code == 200 and seg.json()["width"] == 28
        assert c.get("/v2/health/live").json() == {"live": True}
        assert c.get("/v2/health/ready").json() == {"ready": True}
        assert c.get("/v2/models/fashion-classifier/ready").json()["ready"] is True
        assert c.get("/v2/models/fashion-segmenter").json()["outputs"][0]["shape"] == [
            -1,
            11,
            64,
            64,
        ]
        infer = c.post(
            "/v2/models/fashion-classifier/infer",
            json={
                "inputs": [
                    {
                        "name": "pixel_values",
                        "shape": [1, 1, 28, 28],
                        "datatype": "FP32",
                        "data": [0.0] * 784,
                    }
                ]
            },
        )
        assert infer.status_code == 200 and infer.json()["outputs"][0]["shape"] == [1, 10]
        metrics = c.get("/metrics").text
        assert 'neutreno_requests_total{endpoint="/v1/models/{name}/classify"' in metrics


@pytest.mark.parametrize(
    "method, path, kwargs, status",
    [
        (
            "post",
            "/v1/models/fashion-classifier/classify",
            {"files": {"file": ("x.png", b"garbage", "image/png")}},
            400,
        ),
        (
            "post",
            "/v1/models/fashion-classifier/classify",
            {"json": {"image": "AAAA"}, "headers": {}},
            401,
        ),
        ("post", "/v1/models/unknown/classify", {"json": {"image": "AAAA"}}, 404),
        (
            "post",
            "/v1/models/fashion-classifier/classify",
            {"content": b"x" * (9 * 1024 * 1024), "headers": {**KEY, "content-type": "image/png"}},
            413,
        ),
        (
            "post",
            "/v1/models/fashion-classifier/classify",
            {"content": b"hi", "headers": {**KEY, "content-type": "text/plain"}},
            415,
        ),
        (
            "post",
            "/v1/models/fashion-classifier/classify",
            {"json": {"image": "AAAA", "top_k": -1}},
            422,
        ),
        ("post", "/v2/models/fashion-classifier/infer", {"json": {"inputs": []}}, 400),
    ],
)
def test_live_error_statuses(server: LiveServer, method, path, kwargs, status) -> None:
    kwargs = {"headers": KEY, **kwargs}
    r = httpx.request(method.upper(), server.url + path, timeout=10, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert isinstance(error, str) if path.startswith("/v2") else {"type", "message"} <= set(error)


def test_invalid_setting_exits_with_clear_message(repository: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "neutreno.cli", "serve", "--port", "1"],
        cwd=ROOT,
        env={
            "NEUTRENO_MODEL_REPOSITORY": str(repository),
            "NEUTRENO_MAX_BATCH_SIZE": "0",
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "NEUTRENO_MAX_BATCH_SIZE" in proc.stderr and "NEUTRENO_PORT" not in proc.stderr


def test_broken_bundle_is_named_and_healthy_models_serve(
    repository: Path, tmp_path: Path, fashion
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(repository, repo)
    broken = repo / "fashion-segmenter" / "1" / "manifest.json"
    manifest = json.loads(broken.read_text())
    manifest["sha256"] = "0" * 64
    broken.write_text(json.dumps(manifest))
    (repo / "empty-model").mkdir()
    with TestClient(create_app(make_settings(repo))) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503
        reasons = " ".join(ready.json()["reasons"])
        assert "fashion-segmenter" in reasons and "sha256" in reasons and "empty-model" in reasons
        assert c.get("/v2/health/ready").status_code == 503
        assert c.get("/v2/models/fashion-segmenter/ready").status_code == 503
        seg = c.post("/v1/models/fashion-segmenter/segment", json={"image": "AAAA"})
        assert seg.status_code == 503 and seg.json()["error"]["type"] == "model_not_ready"
        ok = c.post(
            "/v1/models/fashion-classifier/classify", json={"image": b64(png_bytes(fashion[0][0]))}
        )
        assert ok.status_code == 200


def test_sigterm_drains_queued_requests_then_exits_zero(repository: Path, fashion) -> None:
    live = start_server(
        repository, {"NEUTRENO_MAX_QUEUE_DELAY_MS": "3000", "NEUTRENO_MAX_BATCH_SIZE": "64"}
    )
    live.wait_ready()
    body = {"image": b64(png_bytes(fashion[0][0]))}
    url = live.url + "/v1/models/fashion-classifier/classify"

    def call(_: int) -> int | str:
        try:
            return httpx.post(url, json=body, timeout=30).status_code
        except httpx.TransportError:  # not accepted before the listener closed
            return "refused"

    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(call, i) for i in range(12)]
        deadline = time.monotonic() + 2.5  # the batch waits 3 s for more requests
        while (
            queued := live.metric("neutreno_queue_depth", model="fashion-classifier")
        ) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert queued >= 1, "no request reached the queue"
        live.send_signal(signal.SIGTERM)
        codes = [f.result() for f in futures]
    assert set(codes) <= {200, 503, "refused"}, codes  # 503: arrived while draining
    assert codes.count(200) >= queued  # everything accepted before SIGTERM was answered
    assert live.wait(timeout=20) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(live.url + "/healthz", timeout=2)
