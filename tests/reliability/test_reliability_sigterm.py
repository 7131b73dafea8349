"""SIGTERM while 50 requests and 8 token streams are in flight: nothing accepted is lost.

50 classify/segment requests sit in the batch queues (an 8 s queue delay holds all but the first
to each model there) and 8 SSE completions are mid-generation when the process gets SIGTERM.
Every one of them must get its full, correct response (streams: every token, then `data: [DONE]`);
requests sent after the
signal are refused (connection refused, or 503 while the listener closes); the process exits 0
within the drain timeout.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from support.service_helpers import b64, png_bytes, start_server

from bench.live_server import LiveServer

DRAIN_TIMEOUT_S = 30
STREAM_TOKENS = 96
REQUESTS, STREAMS = 50, 8


async def _classify(client: httpx.AsyncClient, i: int) -> tuple[int, dict]:
    image = b64(png_bytes(np.full((28, 28), (i * 5) % 256, np.uint8)))
    if i % 5 == 4:
        r = await client.post("/v1/models/fashion-segmenter/segment", json={"image": image})
        return r.status_code, r.json()
    r = await client.post(
        "/v1/models/fashion-classifier/classify", json={"image": image, "top_k": 3}
    )
    return r.status_code, r.json()


async def _stream(
    client: httpx.AsyncClient, started: asyncio.Event, counter: list[int]
) -> tuple[int, int, bool, str | None]:
    """(status, tokens received, saw [DONE], finish_reason) of one streamed completion."""
    body = {
        "model": "tiny-lm",
        "prompt": "And God said",
        "max_tokens": STREAM_TOKENS,
        "ignore_eos": True,
        "stream": True,
        "logprobs": 0,
    }
    tokens, done, reason = 0, False, None
    async with client.stream("POST", "/v1/completions", json=body) as r:
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                choice = json.loads(line[6:])["choices"][0]
                first = tokens == 0
                tokens += len(choice["logprobs"]["tokens"])
                reason = choice["finish_reason"] or reason
                if first and tokens:
                    counter[0] += 1
                    if counter[0] == STREAMS:
                        started.set()
        return r.status_code, tokens, done, reason


async def _queued(server: LiveServer, model: str) -> float:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
        text = (await c.get("/metrics")).text
    line = next(
        (
            ln
            for ln in text.splitlines()
            if ln.startswith(f'neutreno_queue_depth{{model="{model}"}}')
        ),
        "x 0",
    )
    return float(line.split()[-1])


async def _scenario(server: LiveServer) -> dict:
    limits = httpx.Limits(max_connections=REQUESTS + STREAMS + 4)
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
        started, counter = asyncio.Event(), [0]
        streams = [asyncio.create_task(_stream(client, started, counter)) for _ in range(STREAMS)]
        await asyncio.wait_for(started.wait(), 60)  # every stream has its first token
        calls = [asyncio.create_task(_classify(client, i)) for i in range(REQUESTS)]
        deadline = time.monotonic() + 30
        # The first request to each model may run at once (a lone client never waits the
        # queue delay); from the second on they wait for the 8 s delay.
        while (
            await _queued(server, "fashion-classifier") + await _queued(server, "fashion-segmenter")
        ) < REQUESTS - 2:
            assert time.monotonic() < deadline, "the requests never all queued"
            await asyncio.sleep(0.05)
        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        late = []
        for _ in range(5):  # new requests on new connections after the signal
            try:
                async with httpx.AsyncClient(base_url=server.url, timeout=5) as fresh:
                    r = await fresh.post(
                        "/v1/models/fashion-classifier/classify",
                        json={"image": b64(png_bytes(np.zeros((28, 28), np.uint8)))},
                    )
                    late.append(r.status_code)
            except httpx.TransportError:
                late.append("refused")
            await asyncio.sleep(0.1)
        results = await asyncio.gather(*calls)
        stream_results = await asyncio.gather(*streams)
    code = await asyncio.to_thread(server.wait, DRAIN_TIMEOUT_S + 10)
    return {
        "results": results,
        "streams": stream_results,
        "late": late,
        "code": code,
        "exit_after": time.monotonic() - signalled,
    }


@pytest.mark.slow
def test_sigterm_drains_requests_and_streams_then_exits_zero(full_repository: Path) -> None:
    server = start_server(
        full_repository,
        {
            "NEUTRENO_MAX_QUEUE_DELAY_MS": "8000",
            "NEUTRENO_MAX_BATCH_SIZE": "64",
            "NEUTRENO_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
        },
    )
    try:
        server.wait_ready()
        out = asyncio.run(_scenario(server))
    finally:
        server.stop(signal.SIGKILL, timeout=5)
    for status, body in out["results"]:
        assert status == 200, body
        assert len(body.get("predictions", [])) == 3 or body.get("mask_png")
    for status, tokens, done, reason in out["streams"]:
        assert (status, tokens, done, reason) == (200, STREAM_TOKENS, True, "length")
    assert all(s in ("refused", 503) for s in out["late"]), out["late"]
    assert out["code"] == 0, server.output()[-3000:]
    assert out["exit_after"] < DRAIN_TIMEOUT_S, out["exit_after"]
    assert "Traceback" not in server.output(), server.output()[-3000:]
    print(
        f"SIGTERM: {REQUESTS} requests + {STREAMS} streams completed, late requests "
        f"{out['late']}, exit 0 after {out['exit_after']:.1f} s"
    )
