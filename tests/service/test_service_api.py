"""Every endpoint and every error status through FastAPI's TestClient."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from support.service_helpers import MEAN, STD, b64, make_settings, png_bytes

from service import create_app

CLASSIFY = "/v1/models/fashion-classifier/classify"
SEGMENT = "/v1/models/fashion-segmenter/segment"


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height with almost no pixel data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _error(response, status: int, type_: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["type"] == type_, body
    return body["error"]["message"]


def test_health_ready_and_models(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == {
        "fashion-classifier": "ready",
        "fashion-segmenter": "ready",
    }
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list"
    cards = {m["id"]: m for m in listed["data"]}
    assert cards["fashion-classifier"]["task"] == "classification"
    assert cards["fashion-segmenter"]["labels"][0] == "background"


def test_classify_multipart_and_json_agree(client: TestClient, fashion) -> None:
    image = png_bytes(fashion[0][3])
    multipart = client.post(
        CLASSIFY, files={"file": ("x.png", image, "image/png")}, data={"top_k": "3"}
    )
    as_json = client.post(CLASSIFY, json={"image": b64(image), "top_k": 3})
    assert multipart.status_code == as_json.status_code == 200
    assert multipart.json() == as_json.json()
    preds = as_json.json()["predictions"]
    assert len(preds) == 3 and preds[0]["score"] >= preds[1]["score"] >= preds[2]["score"]
    assert {p["label"] for p in preds} <= set(client.get("/v1/models").json()["data"][0]["labels"])


def test_classify_matches_onnx_runtime_directly(client: TestClient, repository, fashion) -> None:
    images = fashion[0][:8]
    sess = ort.InferenceSession(str(repository / "fashion-classifier/1/model.onnx"))
    x = ((images.astype(np.float32) / 255.0 - MEAN) / STD)[:, None]
    logits = sess.run(["logits"], {"pixel_values": x})[0]
    for img, row in zip(images, logits, strict=False):
        got = client.post(CLASSIFY, json={"image": b64(png_bytes(img)), "top_k": 10}).json()
        probs = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        assert got["predictions"][0]["index"] == int(row.argmax())
        assert np.allclose(
            sorted(p["score"] for p in got["predictions"]), np.sort(probs), atol=1e-5
        )


def test_segment_mask_at_input_size(client: TestClient) -> None:
    ramp = np.tile(np.linspace(0, 255, 90).astype(np.uint8), (50, 1))  # 90 wide, 50 high
    r = client.post(
        SEGMENT,
        files={"file": ("ramp.png", png_bytes(ramp), "image/png")},
        data={"overlay": "true"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (90, 50)
    mask = Image.open(io.BytesIO(base64.b64decode(body["mask_png"])))
    assert mask.mode == "L" and mask.size == (90, 50)
    values = np.asarray(mask)
    assert len(np.unique(values)) > 3  # the test segmenter bands classes by intensity
    fractions = {c["index"]: c["pixel_fraction"] for c in body["classes"]}
    assert abs(sum(fractions.values()) - 1.0) < 1e-6
    for index, fraction in fractions.items():
        assert abs(fraction - (values == index).mean()) < 1e-9
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
    assert overlay.mode == "RGB" and overlay.size == (90, 50)
    plain = client.post(SEGMENT, json={"image": b64(png_bytes(ramp))}).json()
    assert "overlay_png" not in plain and plain["mask_png"] == body["mask_png"]


@pytest.mark.parametrize("mode", ["RGBA", "RGB", "I;16", "CMYK", "P", "1"])
def test_any_image_mode_is_accepted(client: TestClient, mode: str) -> None:
    img = Image.new("RGB", (31, 17), (200, 10, 90)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="TIFF" if mode == "CMYK" else "PNG")
    r = client.post(CLASSIFY, files={"file": ("x", buf.getvalue(), "application/octet-stream")})
    assert r.status_code == 200, r.text


def test_jpeg_extreme_aspect(client: TestClient) -> None:
    data = png_bytes(np.full((1, 3000), 128, np.uint8), fmt="JPEG")
    assert client.post(SEGMENT, json={"image": b64(data)}).status_code == 200


@pytest.mark.parametrize(
    "payload, why",
    [
        (b"", "empty"),
        (b"<html><body>not an image</body></html>", "html"),
        (None, "truncated"),
    ],
)
def test_invalid_images_400(client: TestClient, payload: bytes | None, why: str) -> None:
    if payload is None:
        full = png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
        payload = full[: len(full) // 2]
    r = client.post(CLASSIFY, files={"file": ("x.jpg", payload, "image/jpeg")})
    _error(r, 400, "invalid_image")


def test_bad_base64_400(client: TestClient) -> None:
    _error(client.post(CLASSIFY, json={"image": "not base64!!"}), 400, "invalid_image")


def test_missing_file_field_400(client: TestClient) -> None:
    r = client.post(CLASSIFY, files={"picture": ("x.png", b"abc", "image/png")})
    _error(r, 400, "invalid_request")


@pytest.mark.parametrize("width, height", [(30000, 30000), (5000, 5000)])
def test_decompression_bomb_413(client: TestClient, width: int, height: int) -> None:
    r = client.post(CLASSIFY, files={"file": ("bomb.png", _png_header(width, height), "image/png")})
    assert "pixels" in _error(r, 413, "payload_too_large")


def test_body_too_large_413(repository) -> None:
    with TestClient(create_app(make_settings(repository, max_body_bytes=4096))) as c:
        big = png_bytes(np.random.default_rng(1).integers(0, 255, (128, 128), dtype=np.uint8))
        _error(
            c.post(CLASSIFY, files={"file": ("x.png", big, "image/png")}), 413, "payload_too_large"
        )
        _error(c.post(CLASSIFY, json={"image": b64(big)}), 413, "payload_too_large")


@pytest.mark.parametrize(
    "headers, content",
    [
        ({"content-type": "text/plain"}, b"hello"),
        ({"content-type": "application/xml"}, b"<image/>"),
        ({}, b""),
    ],
)
def test_unsupported_media_type_415(client: TestClient, headers, content) -> None:
    _error(client.post(CLASSIFY, content=content, headers=headers), 415, "unsupported_media_type")


def test_non_image_file_part_415(client: TestClient) -> None:
    r = client.post(CLASSIFY, files={"file": ("x.html", b"<html/>", "text/html")})
    _error(r, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "body",
    [
        {"image": "AAAA", "top_k": 0},
        {"image": "AAAA", "top_k": 1001},
        {"image": "AAAA", "top_k": "many"},
        {"image": "AAAA", "unexpected": 1},
        {"top_k": 3},
    ],
)
def test_parameter_validation_422(client: TestClient, body) -> None:
    _error(client.post(CLASSIFY, json=body), 422, "validation_error")


def test_invalid_json_422(client: TestClient) -> None:
    r = client.post(CLASSIFY, content=b"{not json", headers={"content-type": "application/json"})
    _error(r, 422, "validation_error")


def test_unknown_model_and_route_404(client: TestClient) -> None:
    r = client.post("/v1/models/nope/classify", json={"image": "AAAA"})
    assert "nope" in _error(r, 404, "model_not_found")
    _error(client.get("/v1/nothing-here"), 404, "not_found")
    v2 = client.get("/v2/models/nope")
    assert v2.status_code == 404 and "nope" in v2.json()["error"]


def test_wrong_task_400(client: TestClient) -> None:
    r = client.post(SEGMENT.replace("segmenter", "classifier"), json={"image": "AAAA"})
    _error(r, 400, "wrong_task")


def test_method_not_allowed_405(client: TestClient) -> None:
    _error(client.get(CLASSIFY), 405, "method_not_allowed")


def test_api_key(repository, fashion) -> None:
    settings = make_settings(repository, api_key="s3cret")
    image = {"image": b64(png_bytes(fashion[0][0]))}
    with TestClient(create_app(settings)) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/metrics").status_code == 200
        r = c.post(CLASSIFY, json=image)
        _error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        _error(
            c.post(CLASSIFY, json=image, headers={"Authorization": "Bearer wrong"}),
            401,
            "unauthorized",
        )
        ok = c.post(CLASSIFY, json=image, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        v2 = c.get("/v2/models/fashion-classifier")
        assert v2.status_code == 401 and isinstance(v2.json()["error"], str)


def test_metrics_exposes_every_design_name(client: TestClient, fashion) -> None:
    client.post(CLASSIFY, json={"image": b64(png_bytes(fashion[0][0]))})
    text = client.get("/metrics").text
    for name in [
        "requests_total",
        "request_duration_seconds",
        "queue_duration_seconds",
        "inference_duration_seconds",
        "batch_size",
        "queue_depth",
        "time_to_first_token_seconds",
        "inter_token_latency_seconds",
        "generated_tokens_total",
        "running_sequences",
        "waiting_sequences",
        "token_similarity",
        "model_info",
    ]:
        assert f"neutreno_{name}" in text, name
    assert (
        'neutreno_requests_total{endpoint="/v1/models/{name}/classify",'
        'model="fashion-classifier",status="200"}'
    ) in text
    assert 'neutreno_token_similarity{layer="0",model="fashion-classifier"}' in text
    assert 'neutreno_model_info{attention="neutreno",device="cpu",lam="0.6"' in text


def test_openapi_docs(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/models/{name}/classify"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert body["application/json"]["schema"]["examples"]
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/models",
        "/v1/models/{name}/segment",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/infer",
    ]:
        assert path in spec["paths"], path


def test_draining_service_reports_not_ready_and_refuses_new_work(repository, fashion) -> None:
    with TestClient(create_app(make_settings(repository))) as c:
        c.app.state.service.draining = True  # what SIGTERM sets before uvicorn drains
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "shutting down" in ready.json()["reasons"]
        assert c.get("/v2/health/ready").status_code == 503
        r = c.post(CLASSIFY, json={"image": b64(png_bytes(fashion[0][0]))})
        _error(r, 503, "model_not_ready")
        assert c.get("/healthz").status_code == 200
