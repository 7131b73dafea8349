"""`neutreno serve` as a process tree: two front ends sharing one engine process, or two
engines (NEUTRENO_ENGINES=2) behind them.

Checks what must hold whichever front end answers: one coherent /metrics (counts equal the
requests served), batches formed from several front ends' requests, a killed front end
replaced without failing the other clients, a killed engine taking the server down with a
non-zero status (so an orchestrator restarts it), and a clean SIGTERM drain."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.service_helpers import b64, png_bytes, start_server

from bench.live_server import LiveServer, process_cpu_seconds

CLASSIFY = "/v1/models/fashion-classifier/classify"


@pytest.fixture()
def server(repository: Path, tmp_path: Path) -> Iterator[LiveServer]:
    live = start_server(
        repository,
        {
            "NEUTRENO_WORKERS": "2",
            "NEUTRENO_LOG_LEVEL": "info",
            "NEUTRENO_MAX_QUEUE_DELAY_MS": "50",
        },
        log=tmp_path / "server.log",
    )
    try:
        live.wait_ready()
        wait_for(lambda: len(frontend_pids(live)) == 2, "two front ends started")
        yield live
    finally:
        live.stop()


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.1)


def frontend_pids(live: LiveServer) -> list[int]:
    return [int(p) for p in re.findall(r"Started server process \[(\d+)\]", live.output())]


def engine_pid(live: LiveServer) -> int:
    (pid,) = live.role_pids("engine")
    return pid


async def classify_many(url: str, bodies: list[dict]) -> list[int]:
    """Each request on its own connection, so the kernel spreads them over the front ends."""

    async def one(body: dict) -> int:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            return (await c.post(CLASSIFY, json=body)).status_code

    return list(await asyncio.gather(*(one(b) for b in bodies)))


def test_metrics_are_one_view_and_batches_mix_front_ends(server: LiveServer, fashion) -> None:
    bodies = [{"image": b64(png_bytes(img))} for img in fashion[0][:24]]
    statuses = asyncio.run(classify_many(server.url, bodies))
    assert statuses == [200] * 24
    for _ in range(4):  # each scrape may be answered by either front end: all agree
        ok = server.metric(
            "neutreno_requests_total", status="200", endpoint="/v1/models/{name}/classify"
        )
        assert ok == 24
        rows, batches = server.batch_totals("fashion-classifier")
        assert rows == 24
        assert rows / batches >= 2, "the engine never batched requests together"


def test_killed_front_end_is_replaced_and_others_keep_serving(server: LiveServer, fashion) -> None:
    body = {"image": b64(png_bytes(fashion[0][0]))}
    first, second = frontend_pids(server)
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: len(frontend_pids(server)) == 3, "a replacement front end")
    assert second in frontend_pids(server)
    statuses = asyncio.run(classify_many(server.url, [body] * 8))
    assert statuses == [200] * 8
    assert httpx.get(server.url + "/readyz").status_code == 200


def test_killed_engine_stops_the_server_non_zero(server: LiveServer) -> None:
    os.kill(engine_pid(server), signal.SIGKILL)
    assert server.wait(60) == 1
    assert "the engine process neutreno-engine-0 exited" in server.output()


def test_sigterm_drains_every_process_and_exits_zero(server: LiveServer, fashion) -> None:
    body = {"image": b64(png_bytes(fashion[0][0]))}
    assert asyncio.run(classify_many(server.url, [body] * 4)) == [200] * 4
    server.send_signal(signal.SIGTERM)
    assert server.wait(60) == 0
    assert "drained; exiting" in server.output()


def test_killed_supervisor_takes_every_process_with_it(server: LiveServer) -> None:
    """SIGKILL leaves no orphan: the engine and the front ends see their parent gone and exit,
    so nothing keeps serving on the port."""
    children = [engine_pid(server), *frontend_pids(server)]
    server.kill()
    server.wait(10)
    wait_for(
        lambda: (
            not any(
                Path(f"/proc/{pid}").exists()
                and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
                for pid in children
            )
        ),
        "the children exited",
        30,
    )


def test_two_engines_share_the_load_and_stay_coherent(
    repository: Path, tmp_path: Path, fashion
) -> None:
    """NEUTRENO_ENGINES=2: `ps` names both engines and both front ends; classify and
    generation requests are spread over both engines (each spends CPU on them); /metrics
    counts every request once; killing one engine takes the server down with status 1."""
    live = start_server(
        repository,
        {"NEUTRENO_WORKERS": "2", "NEUTRENO_ENGINES": "2", "NEUTRENO_LOG_LEVEL": "info"},
        log=tmp_path / "server.log",
    )
    try:
        live.wait_ready()  # one front end answers; the other may still be starting
        live.wait_until(lambda: len(live.role_pids("front end")) == 2, "both front ends named")
        engines = live.role_pids("engine")
        assert len(engines) == 2
        titles = {Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0] for p in engines}
        assert titles == {b"neutreno: engine 0 (cpu)", b"neutreno: engine 1 (cpu)"}
        before = [process_cpu_seconds(p) for p in engines]

        async def load() -> list[int]:
            async with httpx.AsyncClient(base_url=live.url, timeout=60) as client:
                body = {"image": b64(png_bytes(fashion[0][0]))}
                return [
                    r.status_code
                    for r in await asyncio.gather(
                        *(client.post(CLASSIFY, json=body) for _ in range(120))
                    )
                ]

        statuses = asyncio.run(load())
        assert statuses == [200] * 120
        spent = [process_cpu_seconds(p) - b for p, b in zip(engines, before, strict=True)]
        assert min(spent) > 0.1 * max(spent), f"one engine idle: {spent}"
        served = live.metric(
            "neutreno_requests_total",
            model="fashion-classifier",
            endpoint="/v1/models/{name}/classify",
            status="200",
        )
        assert served == 120
        os.kill(engines[1], signal.SIGKILL)
        assert live.wait(timeout=30) == 1
        assert "the engine process neutreno-engine-1 exited" in live.output()
    finally:
        live.stop()
