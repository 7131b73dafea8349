"""Generation through a real `neutreno serve` process with the official `openai` client:
non-streaming, streaming, echo + logprobs, 8 concurrent streams, disconnect and SIGTERM drain."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from support.generation_helpers import NAME
from support.service_helpers import start_server
from tokenizers import Tokenizer

from bench.live_server import LiveServer

PROMPT = "In the beginning God created"
STREAMS = [
    ("And God said,", None),
    ("Let there be", None),
    ("The earth was", 3),
    ("In the beginning", 11),
    ("And the evening", None),
    ("Blessed are the", 5),
    ("Unto thee", None),
    ("For God so", 42),
]


@pytest.fixture(scope="module")
def server(lm_repository: Path) -> Iterator[LiveServer]:
    live = start_server(lm_repository)
    try:
        live.wait_ready()
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def metric(server: LiveServer, name: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    found = re.search(rf'^neutreno_{name}{{model="{NAME}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_openai_client_non_streaming_and_models(client: openai.OpenAI) -> None:
    out = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=8, temperature=0)
    assert out.object == "text_completion" and out.model == NAME
    assert out.choices[0].finish_reason == "length" and out.choices[0].text
    assert out.usage.completion_tokens == 8 and out.usage.prompt_tokens > 0
    assert {m.id for m in client.models.list()} == {"fashion-classifier", "fashion-segmenter", NAME}


def test_openai_client_streaming_matches_non_streaming(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=12, temperature=0)
    chunks = list(
        client.completions.create(
            model=NAME,
            prompt=PROMPT,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12


def test_openai_client_echo_logprobs_scores_prompt(client: openai.OpenAI) -> None:
    out = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=0, echo=True, logprobs=1)
    lp = out.choices[0].logprobs
    assert out.choices[0].text == PROMPT and "".join(lp.tokens) == PROMPT
    assert lp.token_logprobs[0] is None and all(x < 0 for x in lp.token_logprobs[1:])
    assert len(lp.text_offset) == len(lp.tokens) == out.usage.prompt_tokens
    assert all(len(top) == 1 for top in lp.top_logprobs[1:])


def _async_client(server: LiveServer) -> openai.AsyncOpenAI:
    """Open it inside the coroutine that uses it, with `async with`: an AsyncOpenAI left
    unclosed schedules its own close on whatever event loop is running when it is garbage
    collected, i.e. inside a later test's loop, where that close fails the later test."""
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_eight_concurrent_streams_equal_running_alone(server: LiveServer) -> None:
    def params(prompt: str, seed: int | None) -> dict:
        sampling = {"temperature": 0.9, "top_p": 0.95, "seed": seed} if seed else {"temperature": 0}
        return {"model": NAME, "prompt": prompt, "max_tokens": 24, **sampling}

    async def streamed(aclient: openai.AsyncOpenAI, prompt: str, seed: int | None) -> str:
        parts = [
            c.choices[0].text
            async for c in await aclient.completions.create(stream=True, **params(prompt, seed))
        ]
        return "".join(parts)

    async def run() -> tuple[list[str], list[str]]:
        async with _async_client(server) as aclient:
            alone = [
                (await aclient.completions.create(**params(p, s))).choices[0].text
                for p, s in STREAMS
            ]
            together = await asyncio.gather(*(streamed(aclient, p, s) for p, s in STREAMS))
        return alone, list(together)

    alone, together = asyncio.run(run())
    assert together == alone
    text = httpx.get(server.url + "/metrics").text
    batched = re.search(rf'neutreno_batch_size_bucket{{le="4.0",model="{NAME}"}} (\S+)', text)
    count = re.search(rf'neutreno_batch_size_count{{model="{NAME}"}} (\S+)', text)
    assert float(batched.group(1)) < float(count.group(1)), "no step ran more than 4 rows"


def test_client_disconnect_frees_the_sequence(server: LiveServer) -> None:
    before = metric(server, "generated_tokens_total")
    body = {"model": NAME, "prompt": PROMPT, "max_tokens": 240, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=10) as r:
        next(line for line in r.iter_lines() if line.startswith("data: "))
    deadline = time.monotonic() + 5
    while metric(server, "running_sequences") != 0:
        assert time.monotonic() < deadline, "sequence still running after disconnect"
        time.sleep(0.02)
    assert metric(server, "generated_tokens_total") - before < 240


def test_client_disconnect_frees_a_non_streaming_sequence(server: LiveServer) -> None:
    before = metric(server, "generated_tokens_total")
    body = json.dumps({"model": NAME, "prompt": PROMPT, "max_tokens": 240}).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + body)
        deadline = time.monotonic() + 5
        while metric(server, "generated_tokens_total") == before:  # the first token is out
            assert time.monotonic() < deadline, "generation never started"
            time.sleep(0.002)
    deadline = time.monotonic() + 5
    while metric(server, "running_sequences") != 0:
        assert time.monotonic() < deadline, "sequence still running after disconnect"
        time.sleep(0.02)
    assert 0 < metric(server, "generated_tokens_total") - before < 240


def test_sigterm_drains_running_streams(lm_repository: Path) -> None:
    live = start_server(lm_repository)
    live.wait_ready()
    lines: list[str] = []
    started = threading.Event()

    def consume() -> None:
        body = {
            "model": NAME,
            "prompt": PROMPT,
            "max_tokens": 200,
            "stream": True,
            "ignore_eos": True,
        }  # a random LM may draw EOS; the drain must give all 200
        with httpx.stream("POST", live.url + "/v1/completions", json=body, timeout=30) as r:
            for line in r.iter_lines():
                lines.append(line)
                started.set()

    reader = threading.Thread(target=consume)
    reader.start()
    assert started.wait(60)
    live.send_signal(signal.SIGTERM)
    at_signal = len(lines)
    reader.join(120)
    assert live.wait(120) == 0
    assert at_signal < len(lines), "the stream had already ended before SIGTERM"
    assert [ln for ln in lines if ln][-1] == "data: [DONE]"
    assert any('"finish_reason":"length"' in line for line in lines), lines[-4:]


def test_generation_controls_through_the_openai_client(
    server: LiveServer, client: openai.OpenAI
) -> None:
    controls = {
        "presence_penalty": 1.0,
        "frequency_penalty": 0.5,
        "logit_bias": {"7": 2.0},
        "extra_body": {"repetition_penalty": 1.2, "min_tokens": 16},
    }

    async def one(aclient: openai.AsyncOpenAI, prompt: str, seed: int) -> openai.types.Completion:
        return await aclient.completions.create(
            model=NAME, prompt=prompt, max_tokens=16, temperature=0.8, seed=seed, **controls
        )

    async def run() -> tuple[list, list]:
        async with _async_client(server) as aclient:
            alone = [await one(aclient, p, s or 1) for p, s in STREAMS[:4]]
            together = await asyncio.gather(*(one(aclient, p, s or 1) for p, s in STREAMS[:4]))
        return alone, list(together)

    alone, together = asyncio.run(run())
    assert [c.choices[0].text for c in together] == [c.choices[0].text for c in alone]
    assert all(c.usage.completion_tokens == 16 for c in alone)  # min_tokens: no early EOS
    with pytest.raises(openai.UnprocessableEntityError, match="presence_penalty"):
        client.completions.create(model=NAME, prompt=PROMPT, presence_penalty=3)


def test_completion_deadline(lm_repository: Path) -> None:
    """NEUTRENO_REQUEST_TIMEOUT_S on completions: 64 prompts x 250 tokens decoded one sequence
    at a time cannot finish in 2 s; the non-streaming answer is 504, a stream that has started
    ends with a deadline_exceeded event before [DONE], a stream with no output yet is 504, and
    every sequence is freed. The last stream waits behind another request and then generates
    only an incomplete UTF-8 byte (logit_bias), text that is held back until the end."""
    tok = Tokenizer.from_file(str(lm_repository / NAME / "1" / "tokenizer.json"))
    partial = next(i for i in range(tok.get_vocab_size()) if tok.decode([i]) == "\ufffd")
    live = start_server(
        lm_repository, {"NEUTRENO_REQUEST_TIMEOUT_S": "2", "NEUTRENO_MAX_RUNNING_SEQUENCES": "1"}
    )
    live.wait_ready()
    long = {"model": NAME, "prompt": ["In the"] * 64, "max_tokens": 250, "ignore_eos": True}
    try:
        started = time.monotonic()
        r = httpx.post(live.url + "/v1/completions", json=long, timeout=30)
        assert r.status_code == 504 and r.json()["error"]["type"] == "deadline_exceeded"
        assert 2 <= time.monotonic() - started < 6
        with httpx.stream(
            "POST", live.url + "/v1/completions", json={**long, "stream": True}, timeout=30
        ) as r:
            assert r.status_code == 200
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and len(events) > 2
        assert json.loads(events[-2])["error"]["type"] == "deadline_exceeded"
        finished = {
            c["choices"][0]["index"]
            for c in map(json.loads, events[:-2])
            if c["choices"][0]["finish_reason"]
        }
        assert finished == set(range(len(finished))) and len(finished) < 64  # cut ones: none
        with httpx.stream(
            "POST", live.url + "/v1/completions", json={**long, "stream": True}, timeout=30
        ) as blocker:  # queued ahead, cancelled just before ours
            assert blocker.status_code == 200
            r = httpx.post(
                live.url + "/v1/completions",
                timeout=30,
                json={
                    **long,
                    "prompt": "In the",
                    "stream": True,
                    "logit_bias": {str(partial): 100},
                },
            )
            assert r.status_code == 504 and r.json()["error"]["type"] == "deadline_exceeded"
        deadline = time.monotonic() + 5
        while metric(live, "running_sequences") + metric(live, "waiting_sequences") != 0:
            assert time.monotonic() < deadline, "sequences still held after their deadline"
            time.sleep(0.05)
    finally:
        live.stop()
