"""Open Inference Protocol (KServe v2) routes: JSON and Triton binary tensors, and their errors."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from support.service_helpers import MEAN, STD

INFER = "/v2/models/fashion-classifier/infer"


def _pixels(fashion, n: int) -> np.ndarray:
    return ((fashion[0][:n].astype(np.float32) / 255.0 - MEAN) / STD)[:, None]


def _direct(repository, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(repository / "fashion-classifier/1/model.onnx"))
    return dict(
        zip(["logits", "token_similarity"], sess.run(None, {"pixel_values": x}), strict=False)
    )


def test_health_and_metadata(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    meta = client.get("/v2/models/fashion-classifier").json()
    assert meta["inputs"] == [
        {"name": "pixel_values", "datatype": "FP32", "shape": [-1, 1, 28, 28]}
    ]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "token_similarity"]
    assert client.get("/v2/models/fashion-classifier/versions/1").json() == meta
    assert client.get("/v2/models/fashion-segmenter/ready").json()["ready"] is True


def test_infer_json_matches_direct_run(client: TestClient, repository, fashion) -> None:
    x = _pixels(fashion, 3)
    r = client.post(
        INFER,
        json={
            "id": "abc",
            "inputs": [
                {
                    "name": "pixel_values",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.reshape(-1).tolist(),
                }
            ],
            "outputs": [{"name": "logits"}],
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "abc" and body["model_name"] == "fashion-classifier"
    (out,) = body["outputs"]
    assert out["name"] == "logits" and out["shape"] == [3, 10] and out["datatype"] == "FP32"
    np.testing.assert_allclose(
        np.asarray(out["data"]).reshape(3, 10),
        _direct(repository, x)["logits"],
        rtol=1e-4,
        atol=1e-5,
    )


def test_infer_binary_tensors_like_tritonclient(client: TestClient, repository, fashion) -> None:
    x = _pixels(fashion, 2)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixel_values",
                    "shape": [2, 1, 28, 28],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [
                {"name": "logits", "parameters": {"binary_data": True}},
                {"name": "token_similarity", "parameters": {"binary_data": False}},
            ],
        }
    ).encode()
    r = client.post(
        INFER,
        content=header + x.tobytes(),
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "content-type": "application/octet-stream",
        },
    )
    assert r.status_code == 200, r.text
    split = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:split])
    logits_meta, sim_meta = meta["outputs"]
    assert logits_meta["parameters"]["binary_data_size"] == 2 * 10 * 4
    logits = np.frombuffer(r.content[split:], np.float32).reshape(2, 10)
    expected = _direct(repository, x)
    np.testing.assert_allclose(logits, expected["logits"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        sim_meta["data"], expected["token_similarity"].reshape(-1), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize(
    "tensor, fragment",
    [
        (
            {"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784},
            "unknown input",
        ),
        (
            {
                "name": "pixel_values",
                "shape": [1, 1, 28, 28],
                "datatype": "INT64",
                "data": [0] * 784,
            },
            "must be FP32",
        ),
        (
            {
                "name": "pixel_values",
                "shape": [1, 1, 27, 28],
                "datatype": "FP32",
                "data": [0.0] * 756,
            },
            "shape",
        ),
        (
            {
                "name": "pixel_values",
                "shape": [1, 1, 28, 28],
                "datatype": "FP32",
                "data": [0.0] * 10,
            },
            "10 values",
        ),
        (
            {
                "name": "pixel_values",
                "shape": [1, 1, 28, 28],
                "datatype": "FP32",
                "data": ["x"] * 784,
            },
            "not float32",
        ),
        (
            {"name": "pixel_values", "shape": [0, 1, 28, 28], "datatype": "FP32", "data": []},
            "batch",
        ),
        ({"name": "pixel_values", "shape": [1, 1, 28, 28], "datatype": "FP32"}, "neither data"),
        (
            {
                "name": "pixel_values",
                "shape": [1, 1, 28, 28],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 4},
            },
            "binary_data_size",
        ),
    ],
)
def test_infer_errors_are_400_with_v2_shape(client: TestClient, tensor, fragment) -> None:
    r = client.post(INFER, json={"inputs": [tensor]})
    assert r.status_code == 400, r.text
    assert isinstance(r.json()["error"], str) and fragment in r.json()["error"]


def test_infer_rejects_nan_unknown_output_and_garbage(client: TestClient) -> None:
    nan = client.post(
        INFER,
        content=b'{"inputs": [{"name": "pixel_values", "shape": [1,1,28,28],'
        b' "datatype": "FP32", "data": [NaN' + b", 0.0" * 783 + b"]}]}",
        headers={"content-type": "application/json"},
    )
    assert nan.status_code == 400, nan.text
    unknown = client.post(
        INFER,
        json={
            "inputs": [
                {
                    "name": "pixel_values",
                    "shape": [1, 1, 28, 28],
                    "datatype": "FP32",
                    "data": [0.0] * 784,
                }
            ],
            "outputs": [{"name": "nope"}],
        },
    )
    assert unknown.status_code == 400 and "nope" in unknown.json()["error"]
    garbage = client.post(INFER, content=b"\x00\xff", headers={"content-type": "application/json"})
    assert garbage.status_code == 400 and isinstance(garbage.json()["error"], str)
    bad_header = client.post(
        INFER, content=b"{}", headers={"Inference-Header-Content-Length": "99"}
    )
    assert bad_header.status_code == 400
