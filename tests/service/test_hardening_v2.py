"""Hardening round 2 (issue 28), /v2 inference and liveness in-process: responses bounded
before the run (cases 7 and 8), large requests run as batches of the model's maximum batch
size (case 8), and /healthz failing when the engine stays silent."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from support.generation_helpers import NAME, add_lm
from support.service_helpers import binary_infer, make_settings, write_test_repository

from service import create_app

MAX_BATCH, MAX_RESPONSE = 8, 4 << 20


@pytest.fixture(scope="module")
def app(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    repo = add_lm(write_test_repository(tmp_path_factory.mktemp("v2_repo")), built)
    settings = make_settings(
        repo, max_batch_size=MAX_BATCH, max_response_bytes=MAX_RESPONSE, liveness_timeout_s=0.2
    )
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture()
def runs(app: TestClient, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows of every run the front end asks of the engine, as the test goes."""
    engine = app.app.state.service.engine
    rows: list[int] = []
    real = engine.run

    async def spy(name: str, feeds: dict[str, np.ndarray], shared: bool = False) -> object:
        rows.append(next(iter(feeds.values())).shape[0])
        return await real(name, feeds, shared)

    monkeypatch.setattr(engine, "run", spy)
    return rows


def test_oversized_response_refused_before_the_run(app: TestClient, runs: list[int]) -> None:
    """Issue: 510 segmenter images ran as one 4.5 s batch (engine +1.5 GB) before the 413 for
    the response's size. 40 images' logits (7 MB) over a 4 MiB limit: 413, nothing run."""
    images = np.zeros((40, 1, 64, 64), np.float32)
    body, headers = binary_infer([("pixel_values", images)], ["logits"])
    r = app.post("/v2/models/fashion-segmenter/infer", content=body, headers=headers)
    assert r.status_code == 413 and "before running" in r.json()["error"]
    assert runs == []
    json_logits = {"inputs": [_json_tensor("pixel_values", images[:8])]}  # 8 rows, as text
    r = app.post("/v2/models/fashion-segmenter/infer", json=json_logits)
    assert r.status_code == 413 and runs == []


def _json_tensor(name: str, array: np.ndarray) -> dict[str, object]:
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": "FP32",
        "data": array.ravel().tolist(),
    }


def test_large_request_runs_in_batches_of_the_maximum(app: TestClient, runs: list[int]) -> None:
    """Issue: 2,600 classifier rows ran as one batch (engine 2.7 GB, everyone's latency 2 s).
    Now at most NEUTRENO_MAX_BATCH_SIZE rows a run, answers identical to one-row runs."""
    images = np.random.default_rng(0).normal(0, 1, (20, 1, 28, 28)).astype(np.float32)
    body, headers = binary_infer([("pixel_values", images)], ["logits"])
    r = app.post("/v2/models/fashion-classifier/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert runs == [8, 8, 4]
    split = int(r.headers["Inference-Header-Content-Length"])
    logits = np.frombuffer(r.content[split:], np.float32).reshape(20, 10)
    one, headers = binary_infer([("pixel_values", images[13:14])], ["logits"])
    single = app.post("/v2/models/fashion-classifier/infer", content=one, headers=headers)
    split = int(single.headers["Inference-Header-Content-Length"])
    assert np.allclose(np.frombuffer(single.content[split:], np.float32), logits[13], atol=1e-5)


def test_raw_lm_rows_bounded_and_batched(app: TestClient, runs: list[int]) -> None:
    """Issue: 15 x 256 ids asking for logits made a 63 KB request a 63 MB response. Now its
    size is known before the run (413 over the limit) and rows run in batches."""
    meta = app.get(f"/v2/models/{NAME}").json()
    past = {
        s["name"]: np.zeros((12, s["shape"][1], 0, s["shape"][3]), np.float32)
        for s in meta["inputs"][2:]
    }

    def feeds(rows: int, tokens: int) -> dict[str, np.ndarray]:
        ids = np.ones((rows, tokens), np.int64)
        return {"input_ids": ids, "attention_mask": ids, **{n: a[:rows] for n, a in past.items()}}

    body, headers = binary_infer(
        feeds(12, 200).items(), ["logits"]
    )  # 12 x 200 x 512 floats: 4.9 MB
    r = app.post(f"/v2/models/{NAME}/infer", content=body, headers=headers)
    assert r.status_code == 413 and runs == []
    body, headers = binary_infer(feeds(12, 4).items(), ["logits"])
    r = app.post(f"/v2/models/{NAME}/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert runs == [8, 4]


def test_healthz_fails_when_the_engine_stays_silent(
    app: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue: with the engine channel wedged every model answered 503 while /healthz stayed
    200, so nothing restarted the front end. Now /healthz fails once the engine has been
    silent for NEUTRENO_LIVENESS_TIMEOUT_S (0.2 s here) beyond the client's dead bound."""
    engine = app.app.state.service.engine
    assert app.get("/healthz").status_code == 200
    monkeypatch.setattr(engine, "status", lambda: None)
    assert app.get("/healthz").status_code == 200  # silent since now
    time.sleep(0.3)
    r = app.get("/healthz")
    assert r.status_code == 503 and "engine" in r.json()["reasons"][0]
    monkeypatch.undo()
    assert app.get("/healthz").status_code == 200
