"""Serving throughput benchmark: `neutreno bench serve`.

Starts `neutreno serve` twice on the same bundles, once with dynamic batching
(NEUTRENO_MAX_BATCH_SIZE > 1) and once without (1), and drives POST /v1/models/<model>/classify
(JSON base64 PNGs from the Fashion-MNIST test fixture) at each concurrency in a closed loop.
The load generator is `wrk` with a Lua script when it is installed (a C tool, so the client does
not compete with the server for the GIL), else a lean asyncio/httpx client. It prints (and with
--out writes) a markdown table of throughput, p50/p99 latency and mean server-side batch size,
with the batching-on/off throughput ratio per concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from bench.common import (ROOT, Server, machine, print_markdown, request_bodies, run_wrk,
                          write_wrk_files)


@dataclass
class Result:
    """One (mode, concurrency) measurement."""

    batching: bool
    clients: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    failures: int
    mean_batch: float
    cpu_ms: float  # server process CPU time per request: robust to other load on the machine

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def batch_totals(server: Server, model: str) -> tuple[float, float]:
    """(rows, batches) so far, from neutreno_batch_size's sum and count."""
    text = httpx.get(server.url + "/metrics", timeout=5).text
    found = {}
    for kind in ("sum", "count"):
        m = re.search(rf'neutreno_batch_size_{kind}{{model="{re.escape(model)}"}} (\S+)', text)
        found[kind] = float(m.group(1)) if m else 0.0
    return found["sum"], found["count"]


def run_python(url: str, bodies: list[str], clients: int,
               seconds: float) -> tuple[int, float, float, float, int]:
    """The same closed loop with asyncio + httpx (used when wrk is not installed)."""
    async def client(http: httpx.AsyncClient, stop: float, lat: list[float], k: int) -> int:
        failures = 0
        while time.perf_counter() < stop:
            t = time.perf_counter()
            r = await http.post(url, content=bodies[k % len(bodies)],
                                headers={"content-type": "application/json"})
            lat.append(time.perf_counter() - t)
            failures += r.status_code != 200
            k += clients
        return failures

    async def drive() -> tuple[int, float, float, float, int]:
        lat: list[float] = []
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(limits=limits, timeout=30) as http:
            start = time.perf_counter()
            fails = await asyncio.gather(*(client(http, start + seconds, lat, k)
                                           for k in range(clients)))
            elapsed = time.perf_counter() - start
        ms = np.asarray(lat) * 1e3
        return len(lat), elapsed, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), \
            sum(fails)

    return asyncio.run(drive())


def measure(server: Server, model: str, clients: list[int], seconds: float, batching: bool,
            load: callable) -> list[Result]:
    """Warm up, then one run per concurrency level against a running server."""
    load(8, min(2.0, seconds))
    results = []
    for c in clients:
        rows0, batches0 = batch_totals(server, model)
        cpu0 = server.cpu_seconds()
        n, elapsed, p50, p99, failures = load(c, seconds)
        cpu_ms = (server.cpu_seconds() - cpu0) * 1e3 / max(n, 1)
        rows1, batches1 = batch_totals(server, model)
        mean_batch = (rows1 - rows0) / max(1.0, batches1 - batches0)
        results.append(Result(batching, c, n, elapsed, p50, p99, failures, mean_batch, cpu_ms))
        print(f"  batching={'on ' if batching else 'off'} clients={c:>3}: "
              f"{n / elapsed:8.1f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
              f"batch {mean_batch:5.1f}  cpu {cpu_ms:5.2f} ms/req  failures {failures}",
              file=sys.stderr)
    return results


def markdown(results: list[Result], args: argparse.Namespace, tool: str) -> str:
    """The results table plus the on/off throughput ratio per concurrency."""
    on = {r.clients: r for r in results if r.batching}
    off = {r.clients: r for r in results if not r.batching}
    lines = [
        f"Model `{args.model}` (POST /v1/models/{args.model}/classify, JSON base64 PNG 28x28), "
        f"{args.duration:g} s per point, load generator: {tool}.",
        f"Machine: {machine()}.",
        f"Batching on: NEUTRENO_MAX_BATCH_SIZE={args.max_batch_size}, "
        f"NEUTRENO_MAX_QUEUE_DELAY_MS={args.queue_delay_ms:g}; off: NEUTRENO_MAX_BATCH_SIZE=1.",
        "",
        "| clients | batching | req/s | p50 ms | p99 ms | p99/p50 | mean batch | server CPU ms/req "
        "| failures |",
        "| ---: | :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(results, key=lambda r: (r.clients, not r.batching)):
        lines.append(f"| {r.clients} | {'on' if r.batching else 'off'} | {r.throughput:.1f} | "
                     f"{r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.p99_ms / max(r.p50_ms, 1e-9):.2f} | "
                     f"{r.mean_batch:.1f} | {r.cpu_ms:.2f} | {r.failures} |")
    lines += ["", "| clients | throughput on / off | server CPU per request off / on |",
              "| ---: | ---: | ---: |"]
    for c in sorted(set(on) & set(off)):
        lines.append(f"| {c} | {on[c].throughput / max(off[c].throughput, 1e-9):.2f}x | "
                     f"{off[c].cpu_ms / max(on[c].cpu_ms, 1e-9):.2f}x |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="neutreno bench serve", description=__doc__.splitlines()[0])
    p.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    p.add_argument("--model", default="fashion-classifier")
    p.add_argument("--clients", default="1,8,32,64", help="comma-separated concurrency levels")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--queue-delay-ms", type=float, default=5.0,
                   help="NEUTRENO_MAX_QUEUE_DELAY_MS with batching on")
    p.add_argument("--threads", type=int, default=0, help="NEUTRENO_INTRA_OP_THREADS")
    p.add_argument("--tool", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument("--out", type=Path, help="also write the markdown table here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    clients = [int(c) for c in args.clients.split(",")]
    tool = "wrk" if args.tool == "wrk" or (args.tool == "auto" and shutil.which("wrk")) \
        else "python"
    bodies = request_bodies(64)
    results: list[Result] = []
    path = f"/v1/models/{args.model}/classify"
    with tempfile.TemporaryDirectory() as tmp:
        files = write_wrk_files(Path(tmp), bodies)
        for batching in (True, False):
            size = args.max_batch_size if batching else 1
            with Server(args.repository, {
                    "NEUTRENO_MAX_BATCH_SIZE": str(size),
                    "NEUTRENO_MAX_QUEUE_DELAY_MS": str(args.queue_delay_ms),
                    "NEUTRENO_MAX_QUEUE_SIZE": str(max(256, 4 * max(clients))),
                    "NEUTRENO_INTRA_OP_THREADS": str(args.threads)}) as server:
                server.wait()

                def load(c: int, s: float) -> tuple[int, float, float, float, int]:
                    if tool == "python":
                        return run_python(server.url + path, bodies, c, s)
                    r = run_wrk(server.url, path, files, c, s, threads=min(2, c))
                    return (r["requests"], r["duration_us"] / 1e6, r["p50_us"] / 1e3,
                            r["p99_us"] / 1e3, r["non2xx"] + r["errors"])

                results += measure(server, args.model, clients, args.duration, batching, load)
    print_markdown(markdown(results, args, tool), args.out)
    return 0
