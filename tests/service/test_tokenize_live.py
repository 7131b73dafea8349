"""`POST /tokenize` and `POST /detokenize` on a live `neutreno serve` with an API key: the
bundle's tokenizer exactly, round trips, and a 4xx with its own message for each bad input."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.generation_helpers import NAME
from support.service_helpers import start_server
from tokenizers import Tokenizer

from bench.live_server import LiveServer

KEY = "tok-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXT = "In the beginning God created the heaven and the earth. café ✝"


@pytest.fixture(scope="module")
def server(lm_repository: Path) -> Iterator[LiveServer]:
    live = start_server(lm_repository, {"NEUTRENO_API_KEY": KEY})
    try:
        live.wait_ready()
        yield live
    finally:
        live.stop()


def post(server: LiveServer, route: str, body: dict | str, headers: dict = AUTH) -> httpx.Response:
    if isinstance(body, str):
        return httpx.post(
            server.url + route,
            content=body,
            headers={**headers, "content-type": "application/json"},
        )
    return httpx.post(server.url + route, json=body, headers=headers)


def test_tokenize_is_the_bundle_tokenizer(server: LiveServer, lm_repository: Path) -> None:
    expected = (
        Tokenizer.from_file(str(lm_repository / NAME / "1" / "tokenizer.json"))
        .encode(TEXT, add_special_tokens=False)
        .ids
    )
    r = post(server, "/tokenize", {"model": NAME, "prompt": TEXT, "return_token_strs": True})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["tokens"] == expected and out["count"] == len(expected) > 5
    assert out["max_model_len"] == 256 and len(out["token_strs"]) == len(expected)
    plain = post(server, "/tokenize", {"model": NAME, "prompt": TEXT}).json()
    assert plain == {"count": len(expected), "max_model_len": 256, "tokens": expected}


def test_detokenize_round_trips_and_matches_completions(server: LiveServer) -> None:
    ids = post(server, "/tokenize", {"model": NAME, "prompt": TEXT}).json()["tokens"]
    r = post(server, "/detokenize", {"model": NAME, "tokens": ids})
    assert r.status_code == 200 and r.json() == {"prompt": TEXT}
    assert post(server, "/detokenize", {"model": NAME, "tokens": []}).json() == {"prompt": ""}
    echo = post(
        server, "/v1/completions", {"model": NAME, "prompt": ids, "max_tokens": 0, "echo": True}
    ).json()
    assert echo["choices"][0]["text"] == TEXT and echo["usage"]["prompt_tokens"] == len(ids)


def test_api_key_is_required(server: LiveServer) -> None:
    for route, body in [
        ("/tokenize", {"model": NAME, "prompt": "a"}),
        ("/detokenize", {"model": NAME, "tokens": [1]}),
    ]:
        r = post(server, route, body, headers={})
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
        wrong = post(server, route, body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401


@pytest.mark.parametrize(
    "route, body, status, message",
    [
        ("/tokenize", {"model": "nope", "prompt": "a"}, 404, "no model named 'nope'"),
        (
            "/tokenize",
            {"model": "fashion-classifier", "prompt": "a"},
            400,
            "does a classification task, not text-generation",
        ),
        ("/tokenize", {"model": NAME}, 422, "prompt: Field required"),
        (
            "/tokenize",
            {"model": NAME, "prompt": ["a"]},
            422,
            "prompt: Input should be a valid string",
        ),
        ("/tokenize", {"model": NAME, "prompt": "a", "extra": 1}, 422, "extra: Extra inputs"),
        (
            "/tokenize",
            f'{{"model": "{NAME}", "prompt": "\\ud800"}}',
            400,
            "prompt is not valid Unicode: surrogates not allowed",
        ),
        (
            "/detokenize",
            {"model": NAME, "tokens": [1, 512]},
            400,
            "tokens has token ids outside [0, 512): [512]",
        ),
        ("/detokenize", {"model": NAME, "tokens": [-1]}, 400, "tokens has token ids outside"),
        ("/detokenize", {"model": NAME, "tokens": ["x"]}, 422, "tokens.0: Input should be a valid"),
        ("/detokenize", {"model": NAME, "tokens": 5}, 422, "tokens: Input should be a valid list"),
        ("/detokenize", {"model": "fashion-segmenter", "tokens": [1]}, 400, "segmentation task"),
    ],
)
def test_bad_requests(
    server: LiveServer, route: str, body: dict | str, status: int, message: str
) -> None:
    r = post(server, route, body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]


def test_web_page_links_the_routes_in_the_api_docs(server: LiveServer) -> None:
    page = httpx.get(server.url + "/").text
    schema = httpx.get(server.url + "/openapi.json").json()
    operations = {
        (op["tags"][0], op["operationId"]): path
        for path, ops in schema["paths"].items()
        for op in ops.values()
    }
    anchors = re.findall(r'href="/docs#/([^/"]+)/([^"]+)"', page)
    linked = {operations[anchor] for anchor in anchors}
    assert {"/tokenize", "/detokenize", "/v1/completions"} <= linked
