"""Text generation in-process: greedy parity with PyTorch, sampling, stops, validation, limits.

Runs on a tiny random-init LM exported to a real bundle (cached, see generation_helpers).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from onnxruntime import OrtValue
from support.generation_helpers import NAME, add_lm
from support.service_helpers import ROOT, make_settings

from export.bundle import GREEDY_IDS
from export.telemetry import SIMILARITY_FLAG
from models.checkpoint import load_checkpoint
from service import create_app
from service.engine.kv import KVBatch
from service.engine.kv_ops import KVOps
from service.engine.runtime import LoopMailbox
from service.engine.scheduler import GenerationScheduler
from service.frontend.generation.tokenizer import TextTokenizer
from service.frontend.generation.validation import ValidRequest
from service.messages import SamplingParams, SeqOutput

PROMPTS = ["In the beginning God created", "And the LORD said unto Moses,", "Blessed are"]


@pytest.fixture(scope="module")
def app_client(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    repo = add_lm(tmp_path_factory.mktemp("lm_repo"), built)
    settings = make_settings(repo, max_queue_size=4, max_running_sequences=8)
    with TestClient(create_app(settings)) as client:
        yield client


def complete(client: TestClient, **body: object) -> dict:
    r = client.post("/v1/completions", json={"model": NAME, **body})
    assert r.status_code == 200, r.text
    return r.json()


def scheduler(client: TestClient) -> GenerationScheduler:
    return client.app.state.service.engine.core.generators[NAME]


def tokenizer(client: TestClient, name: str = NAME) -> TextTokenizer:
    """The front end's tokenizer of the model (the engine deals in ids only)."""
    state = client.app.state.service
    return state.generation_front(state.model(name)).tokenizer


def test_greedy_equals_pytorch(app_client: TestClient, built: Path) -> None:
    model, _ = load_checkpoint(built / "checkpoint")
    tok = tokenizer(app_client)
    for prompt in PROMPTS:
        ids = tok.encode(prompt)
        expected = model.greedy(torch.tensor([ids]), 20)[0, len(ids) :].tolist()
        if tok.eos_id in expected:
            expected = expected[: expected.index(tok.eos_id)]
        out = complete(app_client, prompt=prompt, max_tokens=20, temperature=0)
        assert out["choices"][0]["text"] == tok.decode(expected)
        by_ids = complete(app_client, prompt=ids, max_tokens=20, temperature=0)
        assert by_ids["choices"][0]["text"] == out["choices"][0]["text"]


def test_decode_steps_keep_the_cache_resident(app_client: TestClient, monkeypatch) -> None:
    """Only token ids go in and ids (or logits, when a row reads them) come out per decode
    step: the past is the previous step's presents, bound as OrtValues, never fed from numpy."""
    model = scheduler(app_client).model
    real = model.run_bound
    calls: list[tuple[set[str], set[str], list[str]]] = []
    flags: list[bool] = []

    def spy(feeds, resident, to_host, keep):
        calls.append((set(feeds), set(resident), list(to_host)))
        if SIMILARITY_FLAG in resident:
            flags.append(bool(resident[SIMILARITY_FLAG].numpy()))
        return real(feeds, resident, to_host, keep)

    monkeypatch.setattr(model, "run_bound", spy)
    greedy = complete(app_client, prompt=PROMPTS[0], max_tokens=6, temperature=0, ignore_eos=True)
    past = {i.name for i in model.session.get_inputs() if i.name.startswith("past_key_values.")}
    prefill, *decode = calls
    assert past <= prefill[0] and not prefill[1]  # prompt: empty past from the host
    assert len(decode) == 5  # the prefill's presents join an empty batch as they are
    for feeds, resident, to_host in decode:
        assert feeds == {"input_ids", "attention_mask"} and resident == past | {SIMILARITY_FLAG}
        assert to_host == [GREEDY_IDS]  # the ids only: the logits stay where the model runs
    assert flags == [False] * 5  # decode steps skip the gated similarity subgraph
    calls.clear()  # asking for logprobs reads the logits: same ids, from the host this time
    scored = complete(
        app_client, prompt=PROMPTS[0], max_tokens=6, temperature=0, ignore_eos=True, logprobs=1
    )
    assert [to_host for _, _, to_host in calls[1:]] == [["logits"]] * 5
    assert scored["choices"][0]["text"] == greedy["choices"][0]["text"]


def test_prompt_list_gives_one_choice_each_and_usage(app_client: TestClient) -> None:
    alone = [
        complete(app_client, prompt=p, max_tokens=6, temperature=0)["choices"][0]["text"]
        for p in PROMPTS
    ]
    out = complete(app_client, prompt=PROMPTS, max_tokens=6, temperature=0)
    assert [c["index"] for c in out["choices"]] == [0, 1, 2]
    assert [c["text"] for c in out["choices"]] == alone
    assert all(c["finish_reason"] == "length" for c in out["choices"])
    prompt_tokens = sum(len(tokenizer(app_client).encode(p)) for p in PROMPTS)
    assert out["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 18,
        "total_tokens": prompt_tokens + 18,
    }


def test_seed_determinism(app_client: TestClient) -> None:
    body = {"prompt": PROMPTS[0], "max_tokens": 16, "temperature": 1.0, "top_p": 0.9, "top_k": 50}
    first = complete(app_client, seed=7, **body)["choices"][0]["text"]
    assert complete(app_client, seed=7, **body)["choices"][0]["text"] == first
    together = complete(app_client, **{**body, "prompt": [PROMPTS[1], PROMPTS[0]]}, seed=7)
    assert together["choices"][1]["text"] == first
    others = {complete(app_client, seed=s, **body)["choices"][0]["text"] for s in range(1, 5)}
    assert len(others | {first}) > 1


def test_stop_strings_truncate_before_the_stop(app_client: TestClient) -> None:
    full = complete(app_client, prompt=PROMPTS[1], max_tokens=24, temperature=0)
    text = full["choices"][0]["text"]
    stop = text[8:11]
    cut = text[: text.index(stop)]
    out = complete(
        app_client, prompt=PROMPTS[1], max_tokens=24, temperature=0, stop=["never-there", stop]
    )
    assert out["choices"][0] == {**out["choices"][0], "text": cut, "finish_reason": "stop"}
    streamed = stream_text(app_client, prompt=PROMPTS[1], max_tokens=24, temperature=0, stop=stop)
    assert streamed == (cut, "stop")
    engine = app_client.app.state.service.engine
    assert engine._streams.open == {}  # the front end let go of both streams
    deadline = time.monotonic() + 5  # the engine drops them at its next step
    while scheduler(app_client).running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert scheduler(app_client).running == 0


def stream_text(client: TestClient, **body: object) -> tuple[str, str]:
    """(joined text, finish_reason) of a streamed completion; checks the [DONE] ending."""
    with client.stream(
        "POST", "/v1/completions", json={"model": NAME, "stream": True, **body}
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["text"] for c in chunks)
    return text, chunks[-1]["choices"][0]["finish_reason"]


def test_echo_logprobs_scores_the_prompt(app_client: TestClient, built: Path) -> None:
    model, _ = load_checkpoint(built / "checkpoint")
    tok = tokenizer(app_client)
    ids = tok.encode(PROMPTS[0])
    out = complete(app_client, prompt=PROMPTS[0], max_tokens=0, echo=True, logprobs=2)
    choice = out["choices"][0]
    assert choice["text"] == PROMPTS[0] and choice["finish_reason"] == "length"
    lp = choice["logprobs"]
    assert lp["tokens"] == [tok.token_text(i) for i in ids]
    assert "".join(lp["tokens"]) == PROMPTS[0]
    assert lp["text_offset"] == list(np.cumsum([0] + [len(t) for t in lp["tokens"][:-1]]))
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    expected = torch.log_softmax(logits.double(), -1)[:-1].gather(1, torch.tensor(ids[1:])[:, None])
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    np.testing.assert_allclose(lp["token_logprobs"][1:], expected[:, 0].numpy(), atol=1e-4)
    assert all(len(top) == 2 for top in lp["top_logprobs"][1:])
    assert out["usage"]["completion_tokens"] == 0


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"max_tokens": 0}, 422, "max_tokens must be at least 1 unless echo"),
        ({"max_tokens": -1}, 422, "max_tokens"),
        ({"temperature": 2.5}, 422, "temperature"),
        ({"temperature": -0.1}, 422, "temperature"),
        ({"top_p": 0}, 422, "top_p"),
        ({"top_p": 1.5}, 422, "top_p"),
        ({"top_k": -1}, 422, "top_k"),
        ({"n": 2}, 422, "n must be 1"),
        ({"logprobs": 6}, 422, "logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 422, "at most 4 stop strings"),
        ({"stop": [""]}, 422, "stop strings must not be empty"),
        ({"prompt": []}, 422, "prompt list must not be empty"),
        ({"best_of": 2}, 422, "best_of is not supported"),
        ({"unknown_field": 1}, 422, "unknown_field"),
        ({"prompt": ""}, 400, "prompt 0 is empty"),
        ({"prompt": [1, 2, 100000]}, 400, "token ids outside"),
        ({"max_tokens": 255}, 400, "exceeds the model's context of 256 tokens"),
        ({"prompt": "Amen " * 300}, 413, "the model's context is 256 tokens"),
        ({"prompt": "x" * 10000}, 413, "characters; the limit is"),
        ({"model": "nope"}, 404, "no model named 'nope'"),
    ],
)
def test_validation_errors(app_client: TestClient, body: dict, status: int, message: str) -> None:
    r = app_client.post("/v1/completions", json={"model": NAME, "prompt": "In the", **body})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "raw",
    [
        '{"model": "tiny-lm", "prompt": "a", "temperature": NaN}',
        '{"model": "tiny-lm", "prompt": "a", "top_p": Infinity}',
    ],
)
def test_nan_and_infinity_are_rejected(app_client: TestClient, raw: str) -> None:
    r = app_client.post(
        "/v1/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "finite number" in r.json()["error"]["message"]


def test_queue_limit_gives_429_with_retry_after(app_client: TestClient) -> None:
    r = app_client.post("/v1/completions", json={"model": NAME, "prompt": ["a"] * 5})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["type"] == "queue_full"


def test_models_lists_the_lm(app_client: TestClient) -> None:
    cards = {m["id"]: m for m in app_client.get("/v1/models").json()["data"]}
    assert cards[NAME]["object"] == "model" and cards[NAME]["task"] == "text-generation"


def test_metrics_after_generation(app_client: TestClient) -> None:
    complete(app_client, prompt=PROMPTS[0], max_tokens=3, temperature=0)
    text = app_client.get("/metrics").text
    for name in (
        "time_to_first_token_seconds_count",
        "inter_token_latency_seconds_count",
        "generated_tokens_total",
        "running_sequences",
        "waiting_sequences",
        "queue_duration_seconds_count",
    ):
        assert f'neutreno_{name}{{model="{NAME}"}}' in text, name
    assert f'neutreno_token_similarity{{layer="1",model="{NAME}"}}' in text
    assert f'neutreno_running_sequences{{model="{NAME}"}} 0.0' in text


def _request(ids: list[int], max_new: int) -> ValidRequest:
    return ValidRequest(0, "", tuple(ids), max_new, SamplingParams(), (), None, False)


def test_engine_steps_reach_the_front_end_as_ids_one_call_per_step(app_client: TestClient) -> None:
    """Two streams of one front end: a sink call carries both streams' new ids (no text), one
    call per step at most (steps that end while the event loop is busy come together, in step
    order), and each stream's ids are those its own text decodes from."""
    sched = scheduler(app_client)
    calls: list[list[SeqOutput]] = []

    async def run() -> None:
        done = asyncio.Event()

        def sink(outputs: list[SeqOutput]) -> None:
            calls.append(outputs)
            if sum(o.finish is not None for c in calls for o in c) == 2:
                done.set()

        on_loop = LoopMailbox(sink).post  # the sink is called on the model's thread
        sched.submit(1, [_request([5, 6, 7], 6).to_engine()], on_loop)
        sched.submit(2, [_request([8, 9], 6).to_engine()], on_loop)
        await asyncio.wait_for(done.wait(), 30)

    app_client.portal.call(run)
    assert any({o.rid for o in c} == {1, 2} for c in calls)
    # stream 2 joins at the latest one step after stream 1: 7 steps, not 12 calls of one id
    assert len(calls) <= 7
    for rid in (1, 2):
        mine = [o for c in calls for o in c if o.rid == rid]
        ids = [t for o in mine for t in o.tokens]
        assert len(ids) == 6 and all(isinstance(t, int) for t in ids)
        assert [o.finish for o in mine] == [None] * (len(mine) - 1) + ["length"]


def test_cancel_frees_the_slot_at_the_next_step(app_client: TestClient, monkeypatch) -> None:
    """A cancel reaches the model's thread and ends the sequence at its next step. Steps are
    slowed to 2 ms (the tiny model's 200 tokens would otherwise all be done in the time a
    loaded machine takes to read three chunks), so a lost cancel shows as 200 runs."""
    state = app_client.app.state.service
    sched = scheduler(app_client)
    real, runs = sched.model.run_bound, [0]

    def slow(*args):
        runs[0] += 1
        time.sleep(0.002)
        return real(*args)

    monkeypatch.setattr(sched.model, "run_bound", slow)

    async def run() -> tuple[int, int]:
        stream = await state.generate(state.model(NAME), [_request([5, 6, 7], 200)])
        chunks = stream.chunks()
        for _ in range(3):
            await anext(chunks)
        stream.cancel()
        for _ in range(200):
            if sched.running == 0:
                break
            await asyncio.sleep(0.005)
        return sched.running, runs[0]

    running, steps = app_client.portal.call(run)
    assert running == 0 and steps < 100


def test_kv_batch_select_and_concat_trim_padding() -> None:
    """Rows leave and join on the device: the re-lay graph keeps, trims and left-pads."""

    def batch(lengths: list[int], width: int) -> KVBatch:
        mask = np.zeros((len(lengths), width), np.int64)
        for row, n in enumerate(lengths):
            mask[row, width - n :] = 1
        past = [
            np.arange(len(lengths) * width, dtype=np.float32).reshape(len(lengths), 1, width, 1)
        ]
        return KVBatch(past, mask)

    ops = KVOps([np.zeros((0, 1, 0, 1), np.float32)], ["CPUExecutionProvider"], "cpu", 0)
    merged = batch([2, 3], 3).merged([0, 1], batch([5], 5), ops)
    assert merged.mask.tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert isinstance(merged.past[0], OrtValue)  # re-laid by ORT, not brought to numpy
    assert merged.past[0].numpy()[0, 0, :, 0].tolist() == [0, 0, 0, 1, 2]
    assert merged.past[0].numpy()[2, 0, :, 0].tolist() == [0, 1, 2, 3, 4]
    kept = merged.merged([1, 0], None, ops)
    assert kept.mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    assert kept.past[0].numpy()[0, 0, :, 0].tolist() == [3, 4, 5]
    assert kept.past[0].numpy()[1, 0, :, 0].tolist() == [0, 1, 2]


SHIPPED = ROOT / "model_repository" / "kjv-lm"


def test_shipped_kjv_lm_greedy_equals_pytorch(tmp_path: Path) -> None:
    """The served kjv-lm decodes greedily as the checkpoint its newest version's manifest names
    (both are in the repository; tests/export/test_export_shipped.py checks their parity)."""
    newest = max((p for p in SHIPPED.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    manifest = json.loads((newest / "manifest.json").read_text())
    shutil.copytree(newest, tmp_path / "kjv-lm" / newest.name)  # bundles follow no symlink
    model, _ = load_checkpoint(ROOT / manifest["training"]["checkpoint"])
    with TestClient(create_app(make_settings(tmp_path))) as client:
        tok = tokenizer(client, "kjv-lm")
        for prompt in ["In the beginning God created", "And Jesus answered and said unto"]:
            ids = tok.encode(prompt)
            expected = model.greedy(torch.tensor([ids]), 24)[0, len(ids) :].tolist()
            if tok.eos_id in expected:
                expected = expected[: expected.index(tok.eos_id)]
            r = client.post(
                "/v1/completions",
                json={"model": "kjv-lm", "prompt": prompt, "max_tokens": 24, "temperature": 0},
            )
            assert r.json()["choices"][0]["text"] == tok.decode(expected)


def test_raw_lm_runs_take_turns_with_generation(app_client: TestClient, monkeypatch) -> None:
    """Raw /v2 runs of an LM share its worker thread with generation: four at once reach the
    thread one after another (a decode step waits behind at most one), all answered."""
    core = app_client.app.state.service.engine.core
    model = core.models[NAME]
    real, active, peak = model.run_async, [0], [0]

    async def spy(feeds):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        try:
            return await real(feeds)
        finally:
            active[0] -= 1

    monkeypatch.setattr(model, "run_async", spy)

    async def run() -> list[dict]:
        return await asyncio.gather(*(core.run(NAME, model.example_feeds(1)) for _ in range(4)))

    outputs = app_client.portal.call(run)
    assert peak[0] == 1 and len(outputs) == 4 and all("logits" in o for o in outputs)
