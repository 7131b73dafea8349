"""Soak: `neutreno bench soak` (not CI; 10 minutes by default).

Measures the classifier's capacity R (closed-loop wrk, all 200s), then holds the service at 70%
of R for --minutes: wrk connections pause between requests, the pause calibrated on a short run
so the achieved rate is ~0.7 R. The soak runs as back-to-back wrk segments (30 s each), and
after every segment it records throughput, p50/p99 latency, non-2xx count and the server's RSS.
Pass criteria (from issue 8): p99 stable (the last third's median p99 within 1.5x of the first
third's, after the first segment) and RSS growth from the end of the first segment to the end
< 5%.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import (
    ROOT,
    WrkResult,
    failed,
    machine,
    print_markdown,
    request_bodies,
    run_wrk,
    write_wrk_files,
)
from bench.live_server import LiveServer


class Segment(WrkResult):
    """One wrk segment of the soak, with the server's RSS after it and the minutes so far."""

    rss_mib: float
    t_min: float


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="neutreno bench soak", description=__doc__.splitlines()[0])
    p.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    p.add_argument("--model", default="fashion-classifier")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--load", type=float, default=0.7, help="fraction of measured capacity")
    p.add_argument("--segment", type=float, default=30.0, help="seconds per wrk segment")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--out", type=Path)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    path = f"/v1/models/{args.model}/classify"
    segments: list[Segment] = []
    with (
        LiveServer(args.repository, {"NEUTRENO_MAX_QUEUE_SIZE": "1024"}) as server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        server.wait_ready(timeout=300)
        files = write_wrk_files(Path(tmp), request_bodies(64))

        def wrk(seconds: float, pause: int) -> WrkResult:
            return run_wrk(server.url, path, files, args.clients, seconds, pause)

        wrk(5, 0)  # warm-up
        capacity = wrk(15, 0)
        assert failed(capacity) == 0, capacity
        target = args.load * capacity["rate"]
        pause = max(1, int(1000 * args.clients / target))
        for _ in range(3):  # calibrate the pause to the target rate
            trial = wrk(8, pause)
            pause = max(1, int(pause * trial["rate"] / target))
        print(
            f"capacity {capacity['rate']:.0f} req/s (p99 "
            f"{capacity['p99_us'] / 1e3:.1f} ms); target {target:.0f} req/s; pause "
            f"{pause} ms x {args.clients} connections",
            file=sys.stderr,
        )
        start = time.monotonic()
        while time.monotonic() - start < args.minutes * 60:
            r: Segment = {
                **wrk(args.segment, pause),
                "rss_mib": server.memory_mib()["VmRSS"],
                "t_min": (time.monotonic() - start) / 60,
            }
            segments.append(r)
            print(
                f"  t={r['t_min']:5.1f} min {r['rate']:7.1f} req/s p50 "
                f"{r['p50_us'] / 1e3:6.2f} ms p99 {r['p99_us'] / 1e3:6.2f} ms "
                f"failed {failed(r)} RSS {r['rss_mib']:.1f} MiB",
                file=sys.stderr,
            )
    third = max(1, (len(segments) - 1) // 3)
    first = [s["p99_us"] / 1e3 for s in segments[1 : 1 + third]]
    last = [s["p99_us"] / 1e3 for s in segments[-third:]]
    p99_ratio = float(np.median(last) / np.median(first))
    rss_growth = (segments[-1]["rss_mib"] - segments[0]["rss_mib"]) / segments[0]["rss_mib"]
    failures = sum(failed(s) for s in segments)
    ok = p99_ratio < 1.5 and rss_growth < 0.05 and failures == 0
    lines = [
        f"Soak of `{args.model}` for {args.minutes:g} min at {args.load:.0%} of capacity "
        f"({capacity['rate']:.0f} req/s closed-loop with {args.clients} connections -> target "
        f"{target:.0f} req/s). Machine: {machine()}.",
        "",
        "| t (min) | req/s | p50 ms | p99 ms | max ms | non-2xx + errors | server RSS MiB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in segments:
        lines.append(
            f"| {s['t_min']:.1f} | {s['rate']:.0f} | {s['p50_us'] / 1e3:.2f} | "
            f"{s['p99_us'] / 1e3:.2f} | {s['max_us'] / 1e3:.1f} | "
            f"{failed(s)} | {s['rss_mib']:.1f} |"
        )
    lines += [
        "",
        f"p99 last third / first third (median): {p99_ratio:.2f}; RSS growth after "
        f"the first segment: {100 * rss_growth:+.2f}%; failures: {failures}. "
        f"**{'PASS' if ok else 'FAIL'}** (p99 ratio < 1.5, RSS growth < 5%, no failures).",
    ]
    print_markdown("\n".join(lines) + "\n", args.out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
