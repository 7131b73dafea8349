"""Model repository control (Open Inference Protocol repository extension): index, load and
unload on request (NEUTRENO_MODEL_CONTROL=explicit) and by polling (poll), versioned routes that
answer only for the version really loaded, and requests in flight across a reload."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from support.service_helpers import b64, make_settings, png_bytes, start_server

from service import create_app
from service.frontend.client import MPClient

CLASSIFY = "/v1/models/fashion-classifier/classify"
MODEL = "fashion-classifier"


@pytest.fixture()
def repo(repository: Path, tmp_path: Path) -> Path:
    """A private copy of the test repository (tests add and remove versions)."""
    return Path(shutil.copytree(repository, tmp_path / "repo"))


def add_version(repo: Path, version: str) -> None:
    shutil.copytree(repo / MODEL / "1", repo / MODEL / version)


def test_index_load_and_versioned_routes(repo: Path, fashion) -> None:
    body = {"image": b64(png_bytes(fashion[0][0]))}
    with TestClient(create_app(make_settings(repo, model_control="explicit"))) as c:
        index = c.post("/v2/repository/index").json()
        assert {"name": MODEL, "version": "1", "state": "READY"} in index
        assert c.get(f"/v2/models/{MODEL}/versions/1/ready").status_code == 200
        assert c.get(f"/v2/models/{MODEL}/versions/2/ready").status_code == 404  # none yet
        add_version(repo, "2")
        assert {
            "name": MODEL,
            "version": "2",
            "state": "UNAVAILABLE",
            "reason": "version 1 serves",
        } in c.post("/v2/repository/index").json()
        assert c.post(f"/v2/repository/models/{MODEL}/load").status_code == 200
        assert c.get(f"/v2/models/{MODEL}/versions/2/ready").status_code == 200
        assert c.get(f"/v2/models/{MODEL}/versions/1/ready").status_code == 404
        assert c.get(f"/v2/models/{MODEL}").json()["versions"] == ["2"]
        states = {
            (e["version"], e["state"])
            for e in c.post("/v2/repository/index").json()
            if e["name"] == MODEL
        }
        assert states == {("1", "UNAVAILABLE"), ("2", "READY")}
        assert c.post(CLASSIFY, json=body).status_code == 200
        metrics = c.get("/metrics").text
        assert f'model="{MODEL}",task="classification",version="2"}} 1.0' in metrics
        assert f'model="{MODEL}",task="classification",version="1"}} 0.0' in metrics
        assert c.post(f"/v2/repository/models/{MODEL}/unload").status_code == 200
        assert c.post(CLASSIFY, json=body).status_code == 404
        assert c.get("/readyz").status_code == 200  # unloaded on purpose is not a failure
        assert c.post(f"/v2/repository/models/{MODEL}/load").status_code == 200
        assert c.post(CLASSIFY, json=body).status_code == 200
        assert c.post("/v2/repository/models/nope/load").status_code == 404


def test_broken_new_version_keeps_the_serving_one(repo: Path, fashion) -> None:
    with TestClient(create_app(make_settings(repo, model_control="explicit"))) as c:
        add_version(repo, "3")
        (repo / MODEL / "3" / "model.onnx").write_bytes(b"not an onnx graph")
        assert c.post(f"/v2/repository/models/{MODEL}/load").status_code == 200
        assert c.get(f"/v2/models/{MODEL}/versions/1/ready").status_code == 200
        assert c.get(f"/v2/models/{MODEL}/versions/3/ready").status_code == 404
        [broken] = [e for e in c.post("/v2/repository/index").json() if e["version"] == "3"]
        assert broken["state"] == "UNAVAILABLE" and "version 3 not loaded" in broken["reason"]
        assert c.post(CLASSIFY, json={"image": b64(png_bytes(fashion[0][0]))}).status_code == 200
        shutil.rmtree(repo / MODEL / "1")
        shutil.rmtree(repo / MODEL / "3")
        refused = c.post(f"/v2/repository/models/{MODEL}/load")  # nothing loadable left
        assert refused.status_code == 400 and "no version folder" in refused.json()["error"]
        assert c.post(CLASSIFY, json={"image": b64(png_bytes(fashion[0][0]))}).status_code == 200


def test_control_refused_unless_explicit(repo: Path) -> None:
    with TestClient(create_app(make_settings(repo))) as c:
        refused = c.post(f"/v2/repository/models/{MODEL}/unload")
        assert refused.status_code == 400 and "explicit" in refused.json()["error"]
        assert c.post("/v2/repository/index").status_code == 200


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_requests_in_flight_across_a_reload_all_succeed(repo: Path, fashion) -> None:
    app = create_app(make_settings(repo, model_control="explicit", max_queue_delay_ms=20.0))
    bodies = [{"image": b64(png_bytes(img))} for img in fashion[0][:48]]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            add_version(repo, "2")

            async def traffic() -> list[int]:
                out = []
                for i in range(0, len(bodies), 8):
                    batch = await asyncio.gather(
                        *(c.post(CLASSIFY, json=b) for b in bodies[i : i + 8])
                    )
                    out += [r.status_code for r in batch]
                return out

            statuses, load = await asyncio.gather(
                traffic(), c.post(f"/v2/repository/models/{MODEL}/load")
            )
            assert load.status_code == 200 and statuses == [200] * len(bodies)


def test_poll_mode_picks_up_a_new_version_across_processes(repo: Path, tmp_path: Path) -> None:
    live = start_server(
        repo,
        {
            "NEUTRENO_MODEL_CONTROL": "poll",
            "NEUTRENO_REPOSITORY_POLL_S": "0.5",
            "NEUTRENO_WORKERS": "2",
        },
        log=tmp_path / "server.log",
    )
    try:
        live.wait_ready()
        add_version(repo, "2")
        manifest = repo / MODEL / "2" / "manifest.json"
        manifest.write_text(json.dumps(json.loads(manifest.read_text())))
        deadline = time.monotonic() + 30
        while httpx.get(f"{live.url}/v2/models/{MODEL}/versions/2/ready").status_code != 200:
            assert time.monotonic() < deadline, live.output()
            time.sleep(0.2)
        # Every front end follows within a status poll or two: then 8 answers in a row, from
        # whichever front end, say version 1 is gone.
        deadline, in_a_row = time.monotonic() + 10 * MPClient.STATUS_EVERY_S + 5, 0
        while in_a_row < 8:
            assert time.monotonic() < deadline, "a front end still serves version 1"
            gone = httpx.get(f"{live.url}/v2/models/{MODEL}/versions/1/ready").status_code == 404
            in_a_row = in_a_row + 1 if gone else 0
        shutil.rmtree(repo / MODEL)
        deadline = time.monotonic() + 30
        while httpx.get(f"{live.url}/v2/models/{MODEL}/ready").status_code != 404:
            assert time.monotonic() < deadline, live.output()
            time.sleep(0.2)
    finally:
        live.stop()
