"""Peer comparison: `neutreno bench peers`.

The same trained classifier served three ways, driven by the same load generator (wrk, a C
tool, one thread, a Lua script that POSTs JSON base64 PNGs of Fashion-MNIST test images) at the
same concurrency levels, one system at a time on the same machine:

- NeuTRENO Serve (`neutreno serve`, ONNX Runtime, dynamic batching);
- a straightforward FastAPI + PyTorch eager service of the same checkpoint
  (bench/peers/torch_eager_app.py);
- Ray Serve with `@serve.batch` over the same ONNX model (bench/peers/ray_serve_app.py, run
  from its own virtual environment, bench/.venv-ray, because Ray pins its own web stack).

Every response is checked to be a 200 (non-2xx and socket errors are reported). Prints (and with
--out writes) a markdown table: throughput, p50, p99 per system and concurrency, then the
throughput ratios of NeuTRENO Serve to each peer with the p99s side by side.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import (
    ROOT,
    failed,
    machine,
    print_markdown,
    request_bodies,
    run_wrk,
    write_wrk_files,
)
from bench.live_server import LiveServer, serve_command

RAY_PYTHON = ROOT / "bench/.venv-ray/bin/python"


@dataclass
class Point:
    system: str
    clients: int
    rate: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    failures: int
    cpu_ms: float


def first_classify(url: str, body: str) -> bool:
    """Whether one classify POST answers 200: every system is timed to its first success."""
    r = httpx.post(url, content=body, timeout=10, headers={"content-type": "application/json"})
    return r.status_code == 200


def systems(args: argparse.Namespace) -> dict[str, tuple[list[str], dict[str, str]]]:
    bundle = args.repository / args.model / str(args.version)
    found = {
        "neutreno": (
            serve_command("{port}"),
            {
                "NEUTRENO_MODEL_REPOSITORY": str(args.repository),
                "NEUTRENO_LOG_LEVEL": "warning",
                "NEUTRENO_MAX_BATCH_SIZE": str(args.max_batch_size),
                "NEUTRENO_MAX_QUEUE_DELAY_MS": str(args.batch_wait_ms),
                "NEUTRENO_MAX_QUEUE_SIZE": "1024",
                "NEUTRENO_SIMILARITY_SAMPLE_EVERY": "8",
            },
        ),
        "torch-eager": (
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.peers.torch_eager_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            {"PEER_CHECKPOINT": str(args.checkpoint), "PEER_BUNDLE": str(bundle)},
        ),
    }
    if args.ray_python.exists():
        found["ray-serve"] = (
            [
                str(args.ray_python),
                "bench/peers/ray_serve_app.py",
                "--bundle",
                str(bundle),
                "--port",
                "{port}",
                "--max-batch-size",
                str(args.max_batch_size),
                "--batch-wait-ms",
                str(args.batch_wait_ms),
            ],
            {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"},
        )
    else:
        print(
            f"ray-serve skipped: {args.ray_python} not found (make bench/.venv-ray: python -m "
            "venv bench/.venv-ray && bench/.venv-ray/bin/pip install 'ray[serve]' "
            "onnxruntime pillow numpy)",
            file=sys.stderr,
        )
    return {k: v for k, v in found.items() if k in args.systems}


def measure(args: argparse.Namespace) -> tuple[list[Point], dict[str, float]]:
    bodies = request_bodies(64)
    clients = [int(c) for c in args.clients.split(",")]
    points: list[Point] = []
    ready_s: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = write_wrk_files(Path(tmp), bodies)
        path = f"/v1/models/{args.model}/classify"
        for name, (cmd, env) in systems(args).items():
            peer = LiveServer.command(name, cmd, env)
            try:
                ready_s[name] = peer.wait_until(
                    functools.partial(first_classify, peer.url + path, bodies[0]),
                    "a first classify",
                    timeout=300,
                    interval=0.5,
                )
                run_wrk(peer.url, path, files, max(clients), args.warmup)
                for c in clients:
                    cpu0 = peer.cpu_seconds()
                    r = run_wrk(peer.url, path, files, c, args.duration)
                    cpu = peer.cpu_seconds() - cpu0
                    point = Point(
                        name,
                        c,
                        r["rate"],
                        r["p50_us"] / 1e3,
                        r["p90_us"] / 1e3,
                        r["p99_us"] / 1e3,
                        failed(r),
                        1e3 * cpu / max(r["requests"], 1),
                    )
                    points.append(point)
                    print(
                        f"  {name:<12} clients={c:>3}: {point.rate:8.1f} req/s  p50 "
                        f"{point.p50_ms:7.2f} ms  p99 {point.p99_ms:7.2f} ms  "
                        f"server CPU {point.cpu_ms:.2f} ms/req  failures {point.failures}",
                        file=sys.stderr,
                    )
            finally:
                peer.stop()
    return points, ready_s


def markdown(points: list[Point], ready_s: dict[str, float], args: argparse.Namespace) -> str:
    lines = [
        f"Model `{args.model}` (checkpoint `{args.checkpoint}`, bundle "
        f"`{args.repository / args.model / str(args.version)}`); POST "
        f"/v1/models/{args.model}/classify with JSON base64 28x28 PNGs; wrk (1 thread, "
        f"closed loop) {args.duration:g} s per point after {args.warmup:g} s warm-up.",
        f"Machine: {machine()}. Batching (NeuTRENO, Ray): max batch {args.max_batch_size}, "
        f"wait {args.batch_wait_ms:g} ms. Server CPU is process-tree CPU time per request.",
        "",
        "| system | clients | req/s | p50 ms | p90 ms | p99 ms | server CPU ms/req | failures |",
        "| :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in sorted(points, key=lambda p: (p.clients, p.system)):
        lines.append(
            f"| {p.system} | {p.clients} | {p.rate:.1f} | {p.p50_ms:.2f} | "
            f"{p.p90_ms:.2f} | {p.p99_ms:.2f} | {p.cpu_ms:.2f} | {p.failures} |"
        )
    ours = {p.clients: p for p in points if p.system == "neutreno"}
    peers = sorted({p.system for p in points} - {"neutreno"}) if ours else []  # ratios need ours
    for peer in peers:
        theirs = {p.clients: p for p in points if p.system == peer}
        lines += [
            "",
            f"| clients | neutreno / {peer} throughput | p99 neutreno | p99 {peer} |",
            "| ---: | ---: | ---: | ---: |",
        ]
        for c in sorted(set(ours) & set(theirs)):
            lines.append(
                f"| {c} | {ours[c].rate / max(theirs[c].rate, 1e-9):.2f}x | "
                f"{ours[c].p99_ms:.2f} | {theirs[c].p99_ms:.2f} |"
            )
        best_ours = max(ours.values(), key=lambda p: p.rate)
        best_theirs = max(theirs.values(), key=lambda p: p.rate)
        lines.append(
            f"| best | {best_ours.rate / max(best_theirs.rate, 1e-9):.2f}x "
            f"({best_ours.rate:.0f} vs {best_theirs.rate:.0f} req/s) | "
            f"{best_ours.p99_ms:.2f} (c={best_ours.clients}) | "
            f"{best_theirs.p99_ms:.2f} (c={best_theirs.clients}) |"
        )
    lines += [
        "",
        "Time from process start to first successful classify: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in ready_s.items())
        + ".",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="neutreno bench peers", description=__doc__.splitlines()[0])
    p.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    p.add_argument("--model", default="fashion-classifier")
    p.add_argument("--version", default="1")
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="torch checkpoint of the bundle (default: training.checkpoint)",
    )
    p.add_argument("--clients", default="1,8,32,64")
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-ms", type=float, default=2.0)
    p.add_argument("--systems", default="neutreno,torch-eager,ray-serve")
    p.add_argument("--ray-python", type=Path, default=RAY_PYTHON)
    p.add_argument("--out", type=Path, help="also write the markdown here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not shutil.which("wrk"):
        print("neutreno bench peers: needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    args.systems = set(args.systems.split(","))
    if args.checkpoint is None:
        manifest = json.loads(
            (args.repository / args.model / str(args.version) / "manifest.json").read_text()
        )
        args.checkpoint = ROOT / manifest["training"]["checkpoint"]
    points, ready_s = measure(args)
    print_markdown(markdown(points, ready_s, args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
