"""Dynamic batching: shared batches, one-to-one results, limits, deadlines and failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import numpy as np
import pytest
from support.service_helpers import b64, make_settings, png_bytes

from service import create_app
from service.engine.batching import DynamicBatcher
from service.engine.runtime import RunThread
from service.errors import DeadlineExceeded, InferenceFailed, QueueFull
from service.frontend import imaging
from service.metrics import Metrics

pytestmark = pytest.mark.anyio
CLASSIFY = "/v1/models/fashion-classifier/classify"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeModel:
    """Doubles its input; records batch sizes; optionally slow or failing. Called on the
    batcher's thread, as a model's runs are."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.delay, self.fail = delay, fail

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches.append(len(feeds["x"]))
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("boom")
        return {"y": feeds["x"] * 2}


THREADS: list[RunThread] = []


@pytest.fixture(autouse=True)
def _close_threads() -> Iterator[None]:
    yield
    while THREADS:
        THREADS.pop().close()


def _batcher(model: FakeModel, **kw: object) -> DynamicBatcher:
    """A started batcher on a thread of its own (closed after the test)."""
    opts = {"max_batch_size": 8, "max_queue_delay_s": 0.02, "max_queue_size": 64, **kw}
    THREADS.append(RunThread("test-batcher"))
    b = DynamicBatcher("m", model, THREADS[-1], Metrics(), **opts)  # type: ignore[arg-type]
    b.start()
    return b


def _row(i: int, rows: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, 3), float(i), np.float32)}


async def test_concurrent_requests_share_batches_and_get_their_own_rows() -> None:
    model = FakeModel(delay=0.01)
    b = _batcher(model)
    results = await asyncio.gather(*(b.submit(_row(i), 5.0) for i in range(20)))
    for i, out in enumerate(results):
        assert out["y"].shape == (1, 3) and (out["y"] == 2 * i).all()
    assert sum(model.batches) == 20 and max(model.batches) == 8 and len(model.batches) <= 4
    await b.stop()


async def test_multi_row_requests_split_back_correctly() -> None:
    model = FakeModel()
    b = _batcher(model, max_batch_size=4)
    outs = await asyncio.gather(
        b.submit(_row(1, 3), 5.0), b.submit(_row(2, 1), 5.0), b.submit(_row(3, 6), 5.0)
    )
    assert [o["y"].shape[0] for o in outs] == [3, 1, 6]
    assert [float(o["y"][0, 0]) for o in outs] == [2.0, 4.0, 6.0]
    assert 6 in model.batches  # larger than max_batch_size: runs alone
    await b.stop()


async def test_a_lone_client_never_waits_the_queue_delay() -> None:
    model = FakeModel()
    b = _batcher(model, max_queue_delay_s=0.5)
    start = time.perf_counter()
    for i in range(3):
        await b.submit(_row(i), 5.0)
    assert time.perf_counter() - start < 0.4 and model.batches == [1, 1, 1]
    await b.stop()


async def test_a_request_the_caller_marks_shared_waits_for_batch_mates() -> None:
    """A front end that has other requests in flight (still decoding) says so: the first to
    reach the engine waits the queue delay for them instead of running alone."""
    model = FakeModel()
    b = _batcher(model, max_queue_delay_s=0.2)
    first = asyncio.create_task(b.submit(_row(0), 5.0, shared=True))
    await asyncio.sleep(0.05)  # the batch-mate arrives later, as after a decode
    second = await b.submit(_row(1), 5.0)
    assert float((await first)["y"][0, 0]) == 0.0 and float(second["y"][0, 0]) == 2.0
    assert model.batches == [2]
    await b.stop()


async def test_concurrent_clients_wait_at_most_the_queue_delay() -> None:
    model = FakeModel()
    b = _batcher(model, max_queue_delay_s=0.3)
    await asyncio.gather(b.submit(_row(0), 5.0), b.submit(_row(1), 5.0))  # two outstanding
    start = time.perf_counter()  # within the second after: wait for batch-mates
    await b.submit(_row(9), 5.0)
    assert 0.25 <= time.perf_counter() - start < 1.0 and model.batches == [2, 1]
    await b.stop()


async def test_batch_size_one_turns_batching_off() -> None:
    model = FakeModel(delay=0.005)
    b = _batcher(model, max_batch_size=1, max_queue_delay_s=1.0)
    start = time.perf_counter()
    await asyncio.gather(*(b.submit(_row(i), 5.0) for i in range(6)))
    assert model.batches == [1] * 6
    assert time.perf_counter() - start < 0.9  # no waiting for the 1 s delay
    await b.stop()


async def test_exception_reaches_every_request_in_the_batch() -> None:
    model = FakeModel(fail=True)
    b = _batcher(model)
    results = await asyncio.gather(
        *(b.submit(_row(i), 5.0) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, InferenceFailed) and "boom" in r.message for r in results)
    model.fail = False
    assert (await b.submit(_row(1), 5.0))["y"][0, 0] == 2.0  # the batcher keeps going
    await b.stop()


async def test_full_queue_raises_queue_full_with_retry_after() -> None:
    b = _batcher(FakeModel(delay=0.2), max_batch_size=1, max_queue_size=2)
    results = await asyncio.gather(
        *(b.submit(_row(i), 5.0) for i in range(6)), return_exceptions=True
    )
    full = [r for r in results if isinstance(r, QueueFull)]
    # all six arrive in one tick: two fit the queue, four are refused at once
    assert len(full) == 4 and all(int(e.headers["Retry-After"]) >= 1 for e in full)
    assert sum(isinstance(r, dict) for r in results) == 2
    await b.stop()


async def test_deadline_gives_504_and_expired_requests_never_run() -> None:
    model = FakeModel(delay=0.3)
    b = _batcher(model, max_batch_size=1, max_queue_delay_s=0.0)
    results = await asyncio.gather(
        *(b.submit(_row(i), 0.1) for i in range(4)), return_exceptions=True
    )
    assert all(isinstance(r, DeadlineExceeded) for r in results)
    await asyncio.sleep(0.35)
    assert len(model.batches) == 1  # the three queued behind the first were dropped
    await b.stop()


async def test_flush_runs_the_queue_without_waiting_for_the_delay() -> None:
    model = FakeModel()
    b = _batcher(model, max_queue_delay_s=30.0)
    pending = [asyncio.create_task(b.submit(_row(i), 60.0)) for i in range(3)]
    await asyncio.sleep(0.05)
    assert model.batches == []  # still waiting for a fuller batch
    b.flush()
    results = await asyncio.wait_for(asyncio.gather(*pending), 2.0)
    assert model.batches == [3] and [float(r["y"][0, 0]) for r in results] == [0.0, 2.0, 4.0]
    await b.stop()


async def test_stop_finishes_queued_work() -> None:
    b = _batcher(FakeModel(delay=0.02), max_batch_size=2)
    pending = [asyncio.create_task(b.submit(_row(i), 5.0)) for i in range(6)]
    await asyncio.sleep(0)
    await b.stop()
    results = await asyncio.wait_for(asyncio.gather(*pending), 0.1)
    assert [float(r["y"][0, 0]) for r in results] == [2.0 * i for i in range(6)]


async def test_buckets_pad_batches_and_cut_outputs_back() -> None:
    model = FakeModel(delay=0.01)
    metrics = Metrics()
    THREADS.append(RunThread("test-batcher"))
    b = DynamicBatcher(
        "m",
        model,
        THREADS[-1],
        metrics,
        max_batch_size=8,
        max_queue_delay_s=0.05,
        max_queue_size=64,
        buckets=(1, 4, 8),
    )
    b.start()
    results = await asyncio.gather(*(b.submit(_row(i), 5.0) for i in range(5)))
    lone = await b.submit(_row(9, 2), 5.0)
    assert [float(r["y"][0, 0]) for r in results] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert lone["y"].shape == (2, 3)
    assert model.batches == [8, 4]  # 5 rows padded to 8, then 2 rows to 4
    assert metrics.registry.get_sample_value("neutreno_batch_size_sum", {"model": "m"}) == 7
    await b.stop()


def test_bucket_and_cuda_settings(repository) -> None:
    auto = make_settings(repository, max_batch_size=24)
    assert auto.buckets("cuda") == (1, 2, 4, 8, 16, 24) and auto.buckets("cpu") == ()
    assert make_settings(repository, batch_buckets="16,1,4").buckets("cpu") == (1, 4, 16)
    assert make_settings(repository, batch_buckets="off").buckets("cuda") == ()
    unset = make_settings(repository, max_queue_delay_ms=None)
    assert unset.queue_delay_s("cpu") == 0.0 and unset.queue_delay_s("cuda") == 0.002
    assert make_settings(repository, max_queue_delay_ms=7.0).queue_delay_s("cpu") == 0.007
    with pytest.raises(ValueError):
        make_settings(repository, batch_buckets="1,x")
    options = make_settings(
        repository, cuda_use_tf32=False, cuda_gpu_mem_limit_mb=1024
    ).cuda_provider_options
    assert options == {
        "device_id": "0",
        "cudnn_conv_algo_search": "HEURISTIC",
        "use_tf32": "0",
        "arena_extend_strategy": "kNextPowerOfTwo",
        "gpu_mem_limit": str(1024**3),
    }


async def test_http_batches_padded_to_buckets_answer_each_request(repository, fashion) -> None:
    images, labels = fashion
    async with serving(
        repository, max_batch_size=16, max_queue_delay_ms=50.0, batch_buckets="1,16"
    ) as (app, c):
        runs: list[int] = []
        model = app.state.service.engine.core.models["fashion-classifier"]
        real_run = model.run

        def counting(feeds):
            runs.append(len(feeds["pixel_values"]))
            return real_run(feeds)

        model.run = counting
        bodies = [{"image": b64(png_bytes(img))} for img in images[:5]]
        answers = await asyncio.gather(*(c.post(CLASSIFY, json=b) for b in bodies))
        alone = [(await c.post(CLASSIFY, json=b)).json() for b in bodies]
        for batched, single in zip(answers, alone, strict=True):
            top, ref = batched.json()["predictions"], single["predictions"]
            assert [p["index"] for p in top] == [p["index"] for p in ref]
            np.testing.assert_allclose(
                [p["score"] for p in top], [p["score"] for p in ref], atol=1e-5
            )
        assert set(runs) <= {1, 16} and 16 in runs


@asynccontextmanager
async def serving(
    repository, **overrides: object
) -> AsyncIterator[tuple[object, httpx.AsyncClient]]:
    app = create_app(make_settings(repository, **overrides))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield app, client


async def test_http_requests_share_a_batch(repository, fashion) -> None:
    async with serving(repository, max_batch_size=16, max_queue_delay_ms=50.0) as (app, c):
        bodies = [{"image": b64(png_bytes(img))} for img in fashion[0][:12]]
        responses = await asyncio.gather(*(c.post(CLASSIFY, json=b) for b in bodies))
        assert all(r.status_code == 200 for r in responses)
        metrics = app.state.service.metrics
        count = metrics.registry.get_sample_value(
            "neutreno_batch_size_count", {"model": "fashion-classifier"}
        )
        rows = metrics.registry.get_sample_value(
            "neutreno_batch_size_sum", {"model": "fashion-classifier"}
        )
        assert rows == 12 and count < 12  # fewer batches than requests: they were shared


async def test_ort_failure_gives_every_request_a_clean_error(
    repository, fashion, monkeypatch
) -> None:
    async with serving(repository, max_batch_size=8, max_queue_delay_ms=30.0) as (app, c):
        model = app.state.service.engine.core.models["fashion-classifier"]
        real_run = model.run

        def broken(feeds):
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : injected fault")

        monkeypatch.setattr(model, "run", broken)
        bodies = [{"image": b64(png_bytes(img))} for img in fashion[0][:5]]
        responses = await asyncio.gather(*(c.post(CLASSIFY, json=b) for b in bodies))
        for r in responses:
            assert r.status_code == 503 and r.json()["error"]["type"] == "inference_failed"
            assert "injected fault" in r.json()["error"]["message"]
        monkeypatch.setattr(model, "run", real_run)
        assert (await c.get("/readyz")).status_code == 200
        assert (await c.post(CLASSIFY, json=bodies[0])).status_code == 200


async def test_queue_full_429_and_deadline_504_over_http(repository, fashion, monkeypatch) -> None:
    async with serving(repository, max_batch_size=1, max_queue_size=2, request_timeout_s=0.2) as (
        app,
        c,
    ):
        model = app.state.service.engine.core.models["fashion-classifier"]
        real_run = model.run

        def slow(feeds):
            time.sleep(0.5)  # longer than the deadline, whatever the machine's load
            return real_run(feeds)

        monkeypatch.setattr(model, "run", slow)
        decoded = []
        real_open = imaging.open_image
        monkeypatch.setattr(imaging, "open_image", lambda *a: decoded.append(1) or real_open(*a))
        body = {"image": b64(png_bytes(fashion[0][0]))}
        responses = await asyncio.gather(*(c.post(CLASSIFY, json=body) for _ in range(8)))
        codes = sorted(r.status_code for r in responses)
        assert set(codes) == {429, 504} and codes.count(504) >= 2, codes  # queue of 2 accepted
        assert len(decoded) == codes.count(504)  # refused requests were never decoded
        limited = next(r for r in responses if r.status_code == 429)
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["type"] == "queue_full"
        late = next(r for r in responses if r.status_code == 504)
        assert late.json()["error"]["type"] == "deadline_exceeded"
