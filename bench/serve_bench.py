"""Serving throughput benchmark: `neutreno bench serve`.

Starts `neutreno serve` on the same bundles once per configuration: dynamic batching on at each
`--workers` count (NEUTRENO_WORKERS front ends in front of the one engine process), and batching
off (NEUTRENO_MAX_BATCH_SIZE=1) at the first count. It drives POST /v1/models/<model>/classify
(JSON base64 PNGs from the Fashion-MNIST test fixture) at each concurrency in a closed loop with
`wrk` (a C load generator with a Lua script, `--wrk-threads` threads, so the client is never
the limit; an earlier asyncio client topped out at a fifth of what wrk measured on a GPU host).
It prints (and with --out writes) a markdown table of throughput, p50/p99/p99.9 latency, mean
engine batch and server CPU per request (all the server's processes), with the ratios of each
configuration to the first.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    ROOT,
    WrkFiles,
    WrkResult,
    failed,
    machine,
    print_markdown,
    request_bodies,
    run_wrk,
    write_wrk_files,
)
from bench.live_server import LiveServer


@dataclass
class Result:
    """One (configuration, concurrency) measurement."""

    config: str
    clients: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    failures: int
    mean_batch: float
    cpu_ms: float  # server CPU time per request, all processes: robust to other load

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def measure(
    server: LiveServer,
    config: str,
    model: str,
    clients: list[int],
    seconds: float,
    load: Callable[[int, float], WrkResult],
) -> list[Result]:
    """Warm up, then one run per concurrency level against a running server."""
    load(8, min(2.0, seconds))
    results = []
    for c in clients:
        rows0, batches0 = server.batch_totals(model)
        cpu0 = server.cpu_seconds()
        r = load(c, seconds)
        cpu_ms = (server.cpu_seconds() - cpu0) * 1e3 / max(r["requests"], 1)
        rows1, batches1 = server.batch_totals(model)
        result = Result(
            config,
            c,
            r["requests"],
            r["duration_us"] / 1e6,
            r["p50_us"] / 1e3,
            r["p99_us"] / 1e3,
            r["p999_us"] / 1e3,
            failed(r),
            (rows1 - rows0) / max(1.0, batches1 - batches0),
            cpu_ms,
        )
        results.append(result)
        print(
            f"  {config:<22} clients={c:>4}: {result.throughput:9.1f} req/s  "
            f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
            f"batch {result.mean_batch:5.1f}  cpu {cpu_ms:5.2f} ms/req  "
            f"failures {result.failures}",
            file=sys.stderr,
        )
    return results


def markdown(results: list[Result], args: argparse.Namespace, configs: list[str]) -> str:
    """The results table plus each configuration's throughput relative to the first."""
    lines = [
        f"Model `{args.model}` (POST /v1/models/{args.model}/classify, JSON base64 PNG 28x28), "
        f"{args.duration:g} s per point, wrk with {args.wrk_threads} thread(s).",
        f"Machine: {machine()}.",
        f"Batching on: NEUTRENO_MAX_BATCH_SIZE={args.max_batch_size}, "
        f"NEUTRENO_MAX_QUEUE_DELAY_MS={args.queue_delay_ms:g}; off: NEUTRENO_MAX_BATCH_SIZE=1.",
        "",
        "| configuration | clients | req/s | p50 ms | p99 ms | p99.9 ms | p99.9/p50 "
        "| mean engine batch | server CPU ms/req | failures |",
        "| :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(results, key=lambda r: (r.clients, configs.index(r.config))):
        lines.append(
            f"| {r.config} | {r.clients} | {r.throughput:.1f} | {r.p50_ms:.2f} | "
            f"{r.p99_ms:.2f} | {r.p999_ms:.2f} | {r.p999_ms / max(r.p50_ms, 1e-9):.2f} "
            f"| {r.mean_batch:.1f} | {r.cpu_ms:.2f} | {r.failures} |"
        )
    base = configs[0]
    by = {(r.config, r.clients): r for r in results}
    lines += ["", f"| clients | configuration | throughput / {base} |", "| ---: | :--- | ---: |"]
    for c in sorted({r.clients for r in results}):
        for config in configs[1:]:
            if (config, c) in by and (base, c) in by:
                ratio = by[(config, c)].throughput / max(by[(base, c)].throughput, 1e-9)
                lines.append(f"| {c} | {config} | {ratio:.2f}x |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="neutreno bench serve", description=__doc__.splitlines()[0])
    p.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    p.add_argument("--model", default="fashion-classifier")
    p.add_argument("--clients", default="1,8,32,64", help="comma-separated concurrency levels")
    p.add_argument("--workers", default="1", help="comma-separated NEUTRENO_WORKERS counts")
    p.add_argument(
        "--no-batching-off", action="store_true", help="skip the batching-off configuration"
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument(
        "--queue-delay-ms",
        type=float,
        default=5.0,
        help="NEUTRENO_MAX_QUEUE_DELAY_MS with batching on",
    )
    p.add_argument("--threads", type=int, default=0, help="NEUTRENO_INTRA_OP_THREADS")
    p.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (at most clients)")
    p.add_argument(
        "--tree", type=Path, default=ROOT, help="checkout whose server to run (an older engine)"
    )
    p.add_argument("--out", type=Path, help="also write the markdown table here")
    return p.parse_args(argv)


def configurations(args: argparse.Namespace) -> list[tuple[str, dict[str, str]]]:
    """(name, NEUTRENO_* settings) of each server the benchmark starts."""
    workers = [int(w) for w in args.workers.split(",")]
    common = {
        "NEUTRENO_MAX_QUEUE_DELAY_MS": str(args.queue_delay_ms),
        "NEUTRENO_MAX_QUEUE_SIZE": str(max(256, 4 * max(int(c) for c in args.clients.split(",")))),
        "NEUTRENO_INTRA_OP_THREADS": str(args.threads),
    }
    configs = [
        (
            f"batching on, {w} worker(s)",
            {
                **common,
                "NEUTRENO_WORKERS": str(w),
                "NEUTRENO_MAX_BATCH_SIZE": str(args.max_batch_size),
            },
        )
        for w in workers
    ]
    if not args.no_batching_off:
        configs.append(
            (
                f"batching off, {workers[0]} worker(s)",
                {**common, "NEUTRENO_WORKERS": str(workers[0]), "NEUTRENO_MAX_BATCH_SIZE": "1"},
            )
        )
    return configs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if shutil.which("wrk") is None:
        print("neutreno bench serve: needs wrk (`make wrk`, Debian package wrk)", file=sys.stderr)
        return 2
    clients = [int(c) for c in args.clients.split(",")]
    path = f"/v1/models/{args.model}/classify"
    configs = configurations(args)
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        files: WrkFiles = write_wrk_files(Path(tmp), request_bodies(64))
        for name, settings in configs:
            with LiveServer(args.repository, settings, tree=args.tree.resolve()) as server:
                server.wait_ready(timeout=300)

                def load(c: int, s: float, url: str = server.url) -> WrkResult:
                    return run_wrk(url, path, files, c, s, threads=min(args.wrk_threads, c))

                results += measure(server, name, args.model, clients, args.duration, load)
    print_markdown(markdown(results, args, [name for name, _ in configs]), args.out)
    return 0
