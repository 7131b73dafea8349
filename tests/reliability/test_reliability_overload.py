"""Overload: 3x the sustainable request rate for 60 s against a live server.

The model is a classifier with real compute (~0.6 GFLOP per image on one ORT thread), so that
inference saturates long before the HTTP layer does (on 2 cores the HTTP layer answers ~400
requests/s while inference serves ~95), which is the regime where admission control matters.
The test first measures the sustainable rate R (closed loop, all 200), then
offers ~3R with wrk (C connections, each pausing (C - queue) / 3R between requests, so free
connections keep offering load while accepted requests wait in the queue), while a slow probe
measures the latency of individual 429s and 200s. Then it checks:

- no 5xx but 504 (wrk's status counts and the server's own neutreno_requests_total), and 504s,
  the deadline at work when other processes take the cores mid-run, under 1% of responses;
- the excess is refused with 429 and Retry-After, without waiting for capacity: measured
  against the run's own request deadline (DEADLINE_S, the time a served request may take), the
  probe's 429s take under a quarter of it at the median and under all of it at p99 (a server
  that queued the excess and refused it only when its wait ran out answers them at about the
  deadline; on a 2-core machine the 429 median is 30 ms, 140 ms with other test suites running
  beside it, and p99 0.5 to 1.5 s, the event loop sharing the cores with wrk and inference);
- responses leave the server within the request deadline (504 past it), as the server's own
  neutreno_request_duration_seconds (receipt to response) counts them: at most 0.5% above the
  bucket after DEADLINE_S (2.5 s: a starved event loop fires a timer late; 7 of 3,900 with other
  suites running beside it). wrk's own latencies also count the time a request waits in socket
  buffers for a front end starved of CPU, which no deadline bounds, so they are reported, not
  checked.
- the accepted share keeps serving: at least half of R while overloaded (wrk's 384 connections
  take CPU from inference on 2 cores: 60 to 80% of R is typical; a server that thrashes or
  times out its own work serves a fraction), and after the load stops, throughput is back to 70%
  of R within seconds (R and both rates are measured in the same run, minutes apart, on a
  machine others may share).
The load must be real overload: at least twice R offered (3R is asked for; a loaded machine's
wrk reaches ~2.2x).

Opt-in (too long for `make test`): run by `make test-reliability` (pytest --opt-in), which .ci/run
calls after `make test`; NEUTRENO_OVERLOAD_SECONDS overrides the 60 s (e.g. for a quick local
run). wrk (`make wrk`) is the load generator; without it the test fails.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from support.reliability_helpers import heavy_classifier_graph, run_wrk, write_classifier
from support.service_helpers import b64, png_bytes, start_server

SECONDS = float(os.environ.get("NEUTRENO_OVERLOAD_SECONDS", "60"))
pytestmark = pytest.mark.opt_in("make test-reliability: 60 s at 3x the sustainable rate")
DEADLINE_S = 2.0
QUEUE = 48
PATH = "/v1/models/heavy-classifier/classify"


def _bodies(n: int = 32) -> list[str]:
    rng = np.random.default_rng(0)
    return [
        json.dumps({"image": b64(png_bytes(rng.integers(0, 256, (28, 28), np.uint8))), "top_k": 1})
        for _ in range(n)
    ]


class Probe(threading.Thread):
    """One request every `every` seconds; records (status, seconds, has Retry-After)."""

    def __init__(self, url: str, body: str, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.url, self.body, self.every = url, body, every
        self.records: list[tuple[int, float, bool]] = []
        self.stop_at = 0.0

    def run(self) -> None:
        with httpx.Client(timeout=DEADLINE_S + 5) as client:
            while time.monotonic() < self.stop_at:
                t = time.perf_counter()
                try:
                    r = client.post(
                        self.url, content=self.body, headers={"content-type": "application/json"}
                    )
                    self.records.append(
                        (r.status_code, time.perf_counter() - t, "retry-after" in r.headers)
                    )
                except httpx.TransportError:
                    self.records.append((0, time.perf_counter() - t, False))
                time.sleep(max(0.0, self.every - (time.perf_counter() - t)))


@pytest.fixture(scope="module")
def heavy_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("heavy_repo")
    write_classifier(root, "heavy-classifier", heavy_classifier_graph(512, 24))
    return root


@pytest.mark.slow
def test_overload_3x_refuses_fast_meets_deadlines_and_recovers(heavy_repository: Path) -> None:
    server = start_server(
        heavy_repository,
        {
            "NEUTRENO_MAX_BATCH_SIZE": "8",
            "NEUTRENO_MAX_QUEUE_DELAY_MS": "2",
            "NEUTRENO_MAX_QUEUE_SIZE": str(QUEUE),
            "NEUTRENO_REQUEST_TIMEOUT_S": str(DEADLINE_S),
            "NEUTRENO_SIMILARITY_SAMPLE_EVERY": "0",
        },
    )
    bodies = _bodies()
    try:
        server.wait_ready()
        run_wrk(server.url, PATH, bodies, connections=8, seconds=2)  # warm-up
        base = run_wrk(server.url, PATH, bodies, connections=16, seconds=6)
        assert set(base["statuses"]) == {200}, base
        rate = base["rate"]
        # Up to QUEUE connections wait in the queue; the others, pausing between fast 429s,
        # must offer the 3R between them.
        connections = 8 * QUEUE
        pause_ms = max(1, int(1000 * (connections - QUEUE) / (3 * rate)))
        probe = Probe(server.url + PATH, bodies[0])
        probe.stop_at = time.monotonic() + SECONDS
        probe.start()
        over = run_wrk(
            server.url,
            PATH,
            bodies,
            connections=connections,
            seconds=SECONDS,
            threads=1,
            timeout_s=DEADLINE_S + 8,
            pause_ms=pause_ms,
        )
        probe.join(timeout=DEADLINE_S + 10)
        stopped = time.monotonic()
        time.sleep(1.0)
        after = run_wrk(server.url, PATH, bodies, connections=16, seconds=5)
        recovered_in = time.monotonic() - stopped - 5
        counts = server.status_counts()
        # responses by the server's own clock: all, and within 2.5 s (every endpoint)
        answered = {
            le: server.metric("neutreno_request_duration_seconds_bucket", le=le)
            for le in ("2.5", "+Inf")
        }
    finally:
        code = server.stop()
    statuses = over["statuses"]
    offered = over["rate"]
    refused = [t for s, t, _ in probe.records if s == 429]
    accepted = [t for s, t, _ in probe.records if s == 200]
    report = (
        f"sustainable {rate:.0f} req/s; offered {offered:.0f} req/s "
        f"({offered / rate:.1f}x) for {SECONDS:g} s: {statuses}; wrk p50 "
        f"{over['p50_us'] / 1e3:.0f} ms p99 {over['p99_us'] / 1e3:.0f} ms max "
        f"{over['max_us'] / 1e3:.0f} ms; probe 429 p50 "
        f"{1e3 * np.median(refused) if refused else float('nan'):.1f} ms p99 "
        f"{1e3 * np.percentile(refused, 99) if refused else float('nan'):.1f} ms, "
        f"probe 200 p50 {1e3 * np.median(accepted) if accepted else 0:.0f} ms "
        f"p99 {1e3 * np.percentile(accepted, 99) if accepted else 0:.0f} ms; "
        f"after: {after['rate']:.0f} req/s ({after['rate'] / rate:.0%}) "
        f"{recovered_in + 5:.1f} s after the load stopped"
    )
    print(report)
    assert offered >= 2.0 * rate, report
    # no failure (500, 502, 503) by the server's count or wrk's; 504s are the deadline at work,
    # rare here (the queue bound keeps the wait below it while capacity holds)
    failures = {s: n for s, n in counts.items() if s.startswith("5") and s != "504"}
    assert not failures and not any(s >= 500 and s != 504 for s in statuses), (failures, report)
    assert counts.get("504", 0) <= 0.01 * sum(counts.values()), report
    assert over["socket_errors"] == 0 and over["timeouts"] == 0, report
    assert statuses.get(429, 0) > 0.3 * over["requests"], report  # the excess is refused
    assert over["retry_after_missing"] == 0, report
    assert all(has for s, _, has in probe.records if s == 429), "429 without Retry-After"
    assert refused and np.median(refused) < DEADLINE_S / 4, report
    assert np.percentile(refused, 99) < DEADLINE_S, report
    # responses within the deadline (the 504 boundary) plus slack, as the server timed them
    late = answered["+Inf"] - answered["2.5"]
    assert late <= 0.005 * answered["+Inf"], f"{late:.0f} responses after 2.5 s; {report}"
    assert statuses.get(200, 0) >= 0.5 * rate * SECONDS, report  # capacity kept serving
    assert set(after["statuses"]) == {200} and after["rate"] >= 0.7 * rate, report
    assert code == 0
