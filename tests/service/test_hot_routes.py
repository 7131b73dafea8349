"""The hot inference routes (service/frontend/hot_routes.py) answer byte for byte what FastAPI's
router answers for the same requests, successes and errors alike, and the request is counted
under the same route template."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi import APIRouter, Request
from fastapi.testclient import TestClient
from support.service_helpers import b64, binary_infer, make_settings, png_bytes

from service import create_app
from service.frontend.hot_routes import HotRoutes, hot_routes
from service.frontend.routes import v1

KEY = "hot-key"
JSON = {"Content-Type": "application/json"}
AUTH = {"Authorization": f"Bearer {KEY}"}
IMAGE = {"image": b64(png_bytes(np.arange(784, dtype=np.uint8).reshape(28, 28)))}
PIXELS = np.linspace(-1, 1, 2 * 28 * 28, dtype=np.float32).reshape(2, 1, 28, 28)
V2_JSON = {
    "inputs": [
        {
            "name": "pixel_values",
            "shape": list(PIXELS.shape),
            "datatype": "FP32",
            "data": PIXELS.ravel().tolist(),
        }
    ]
}


@pytest.fixture(scope="module")
def client(repository: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(repository, api_key=KEY))) as c:
        yield c


def _both(client: TestClient, method: str, path: str, **kwargs: object) -> tuple:
    """The same request answered through the hot routes and through FastAPI's router."""
    router = client.app.router  # type: ignore[attr-defined]
    hot = router.middleware_stack
    assert isinstance(hot, HotRoutes)
    fast = client.request(method, path, **kwargs)
    router.middleware_stack = hot.app
    try:
        slow = client.request(method, path, **kwargs)
    finally:
        router.middleware_stack = hot
    return fast, slow


@pytest.mark.parametrize(
    ("path", "kwargs", "status"),
    [
        ("/v1/models/fashion-classifier/classify", {"json": IMAGE}, 200),
        ("/v1/models/fashion-classifier/classify?top_k=3", {"json": IMAGE}, 200),
        ("/v1/models/fashion-segmenter/segment", {"json": IMAGE}, 200),
        ("/v2/models/fashion-classifier/infer", {"json": V2_JSON}, 200),
        ("/v2/models/fashion-classifier/versions/1/infer", {"json": V2_JSON}, 200),
        ("/v2/models/fashion-classifier/versions/9/infer", {"json": V2_JSON}, 404),
        ("/v1/models/fashion-classifier/classify", {"json": {"image": "%%%"}}, 400),
        ("/v1/models/fashion-classifier/classify", {"content": b"{", "headers": JSON}, 422),
        ("/v1/models/nope/classify", {"json": IMAGE}, 404),
        ("/v1/models/fashion-classifier/segment", {"json": IMAGE}, 400),
        ("/v2/models/fashion-classifier/infer", {"json": {"inputs": []}}, 400),
    ],
)
def test_same_answer_as_fastapi(client: TestClient, path: str, kwargs: dict, status: int) -> None:
    kwargs = {**kwargs, "headers": {**AUTH, **kwargs.get("headers", {})}}
    fast, slow = _both(client, "POST", path, **kwargs)
    assert fast.status_code == slow.status_code == status, fast.text
    assert fast.content == slow.content
    assert fast.headers.get("content-type") == slow.headers.get("content-type")


def test_binary_infer_and_the_api_key(client: TestClient) -> None:
    body, headers = binary_infer([("pixel_values", PIXELS)], ["logits"])
    path = "/v2/models/fashion-classifier/infer"
    fast, slow = _both(client, "POST", path, content=body, headers={**headers, **AUTH})
    assert fast.status_code == 200 and fast.content == slow.content
    assert (
        fast.headers["inference-header-content-length"]
        == slow.headers["inference-header-content-length"]
    )
    fast, slow = _both(client, "POST", path, content=body, headers=headers)  # no key
    assert fast.status_code == slow.status_code == 401 and fast.content == slow.content


def test_other_methods_and_routes_reach_fastapi(client: TestClient) -> None:
    r = client.get("/v1/models/fashion-classifier/classify", headers=AUTH)
    assert r.status_code == 405
    assert client.get("/v1/models", headers=AUTH).status_code == 200


def test_counted_under_the_route_template(client: TestClient) -> None:
    def count() -> float:
        metrics = client.app.state.service.metrics  # type: ignore[attr-defined]
        return metrics.requests_total.labels(
            "fashion-classifier", "/v1/models/{name}/classify", "200"
        )._value.get()

    before = count()
    assert (
        client.post("/v1/models/fashion-classifier/classify", json=IMAGE, headers=AUTH).status_code
        == 200
    )
    assert count() == before + 1


def test_hot_endpoints_must_be_post_routes_taking_request_and_state() -> None:
    with pytest.raises(LookupError):
        hot_routes([APIRouter()], [v1.classify])
    router = APIRouter()

    @router.post("/x/{name}")
    async def lacks_state(name: str, request: Request) -> None: ...

    with pytest.raises(TypeError, match="request and state"):
        hot_routes([router], [lacks_state])
