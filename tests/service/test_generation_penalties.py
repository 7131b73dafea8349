"""Generation controls in-process: presence/frequency/repetition penalties, logit_bias and
min_tokens against a PyTorch reference of their published formulas, and their validation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from support.generation_helpers import NAME, add_lm
from support.service_helpers import make_settings

from models.checkpoint import load_checkpoint
from service import create_app
from service.frontend.generation.tokenizer import TextTokenizer

PROMPT = "And the LORD said unto Moses,"


@pytest.fixture(scope="module")
def app_client(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    repo = add_lm(tmp_path_factory.mktemp("lm_repo"), built)
    with TestClient(create_app(make_settings(repo, max_running_sequences=8))) as client:
        yield client


@pytest.fixture(scope="module")
def tok(app_client: TestClient) -> TextTokenizer:
    state = app_client.app.state.service
    return state.generation_front(state.model(NAME)).tokenizer


def complete(client: TestClient, **body: object) -> dict:
    r = client.post("/v1/completions", json={"model": NAME, "prompt": PROMPT, **body})
    assert r.status_code == 200, r.text
    return r.json()


def reference(
    built: Path,
    ids: list[int],
    steps: int,
    *,
    presence: float = 0.0,
    frequency: float = 0.0,
    repetition: float = 1.0,
    bias: dict[int, float] | None = None,
    min_tokens: int = 0,
    eos: int = 0,
) -> list[int]:
    """Greedy tokens from the PyTorch model with the controls written out as OpenAI and vLLM
    document them (an independent implementation of service.engine.penalties)."""
    model, _ = load_checkpoint(built / "checkpoint")
    out: list[int] = []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(torch.tensor([ids + out])).logits[0, -1].double()
        for token, value in (bias or {}).items():
            logits[token] += value
        if len(out) < min_tokens:
            logits[eos] = float("-inf")
        for token in set(ids + out):
            logits[token] = (
                logits[token] / repetition if logits[token] > 0 else logits[token] * repetition
            )
        for token in set(out):
            logits[token] -= frequency * out.count(token) + presence
        out.append(int(logits.argmax()))
        if out[-1] == eos and len(out) >= min_tokens:
            break
    return out


@pytest.mark.parametrize(
    "controls, ref",
    [
        ({"frequency_penalty": 1.5}, {"frequency": 1.5}),
        ({"presence_penalty": 2.0}, {"presence": 2.0}),
        (
            {"presence_penalty": -1.0, "frequency_penalty": 0.5},
            {"presence": -1.0, "frequency": 0.5},
        ),
        ({"repetition_penalty": 1.8}, {"repetition": 1.8}),
        ({"repetition_penalty": 0.5}, {"repetition": 0.5}),
    ],
)
def test_penalties_equal_the_reference(
    app_client: TestClient, tok: TextTokenizer, built: Path, controls: dict, ref: dict
) -> None:
    ids = tok.encode(PROMPT)
    plain = reference(built, ids, 24)
    expected = reference(built, ids, 24, **ref)
    assert expected != plain, "the control changes nothing on this prompt: a useless case"
    out = complete(app_client, max_tokens=24, temperature=0, **controls)
    assert out["choices"][0]["text"] == tok.decode(expected)


def test_penalties_break_greedy_loops(app_client: TestClient) -> None:
    plain = complete(app_client, max_tokens=48, temperature=0, logprobs=0)
    penal = complete(app_client, max_tokens=48, temperature=0, logprobs=0, frequency_penalty=2.0)
    distinct = [len(set(c["choices"][0]["logprobs"]["tokens"])) for c in (plain, penal)]
    assert distinct[1] > distinct[0], distinct


def test_logit_bias_forces_and_bans_tokens(
    app_client: TestClient, tok: TextTokenizer, built: Path
) -> None:
    ids = tok.encode(PROMPT)
    forced = tok.encode(" LORD")[0]
    out = complete(app_client, max_tokens=6, temperature=0.7, seed=3, logit_bias={str(forced): 100})
    assert out["choices"][0]["text"] == tok.decode([forced] * 6)
    first = reference(built, ids, 1)[0]
    banned = complete(app_client, max_tokens=8, temperature=0, logit_bias={str(first): -100})
    expected = reference(built, ids, 8, bias={first: -100.0})
    assert expected[0] != first
    assert banned["choices"][0]["text"] == tok.decode(expected)


def test_min_tokens_suppresses_eos(app_client: TestClient, tok: TextTokenizer) -> None:
    eos_now = {"max_tokens": 20, "temperature": 0, "logit_bias": {str(tok.eos_id): 100}}
    early = complete(app_client, **eos_now)
    assert early["choices"][0]["finish_reason"] == "stop"
    assert early["usage"]["completion_tokens"] == 1
    late = complete(app_client, min_tokens=7, **eos_now)
    assert late["choices"][0]["finish_reason"] == "stop"
    assert late["usage"]["completion_tokens"] == 8  # 7 tokens, then the favoured EOS
    assert late["choices"][0]["text"]


def test_min_tokens_ignores_early_stop_strings(app_client: TestClient) -> None:
    full = complete(app_client, max_tokens=24, temperature=0, logprobs=0)
    tokens = full["choices"][0]["logprobs"]["tokens"]
    stop = tokens[1]
    assert stop.strip(), tokens
    cut = complete(app_client, max_tokens=24, temperature=0, stop=stop)
    assert cut["choices"][0]["finish_reason"] == "stop"
    late = complete(app_client, max_tokens=24, temperature=0, stop=stop, min_tokens=20)
    text = late["choices"][0]["text"]
    assert late["usage"]["completion_tokens"] >= 20
    assert text.startswith("".join(tokens[:2])) and len(text) > len(cut["choices"][0]["text"])


def test_controls_are_per_row_and_seeded(app_client: TestClient) -> None:
    body = {
        "max_tokens": 16,
        "temperature": 0.9,
        "top_p": 0.95,
        "seed": 11,
        "presence_penalty": 0.7,
        "repetition_penalty": 1.3,
        "logit_bias": {"5": 3.5},
    }
    alone = complete(app_client, **body)["choices"][0]["text"]
    assert complete(app_client, **body)["choices"][0]["text"] == alone
    together = complete(app_client, **{**body, "prompt": ["Blessed are", PROMPT, PROMPT]})
    assert [c["text"] for c in together["choices"][1:]] == [alone, alone]
    plain = complete(
        app_client, **{**body, "presence_penalty": 0, "repetition_penalty": 1, "logit_bias": None}
    )["choices"][0]["text"]
    assert plain != alone


@pytest.mark.parametrize(
    "body, status, message",
    [
        (
            {"presence_penalty": 2.5},
            422,
            "presence_penalty: Input should be less than or equal to 2",
        ),
        ({"frequency_penalty": -2.01}, 422, "frequency_penalty: Input should be greater than or"),
        ({"repetition_penalty": 0}, 422, "repetition_penalty: Input should be greater than 0"),
        ({"min_tokens": -1}, 422, "min_tokens: Input should be greater than or equal to 0"),
        ({"min_tokens": 5, "max_tokens": 3}, 422, "min_tokens (5) must not exceed max_tokens (3)"),
        ({"logit_bias": {"a": 1}}, 422, "logit_bias keys must be token ids"),
        ({"logit_bias": {"-1": 1}}, 422, "logit_bias keys must be token ids"),
        ({"logit_bias": {"1": 100.5}}, 422, "logit_bias values must be in [-100, 100]"),
        ({"logit_bias": {str(i): 1 for i in range(301)}}, 422, "at most 300"),
        ({"logit_bias": {"512": 1}}, 400, "logit_bias has token ids outside [0, 512): [512]"),
        ({"min_tokens": 256, "max_tokens": None}, 400, "min_tokens (256) exceeds the"),
    ],
)
def test_control_validation(app_client: TestClient, body: dict, status: int, message: str) -> None:
    r = app_client.post("/v1/completions", json={"model": NAME, "prompt": "In the", **body})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]
