"""`neutreno bench grpc`: classify over gRPC vs HTTP JSON vs HTTP binary tensors, side by side.

One `neutreno serve` serves HTTP and gRPC (NEUTRENO_GRPC_PORT) at once; the same classifier
runs the same one-image Open Inference Protocol request three ways: `POST /v2/models/<m>/infer`
with JSON `data`, the same route with Triton's binary tensor extension (what tritonclient.http
sends), and gRPC ModelInfer with `raw_input_contents` (what tritonclient.grpc sends), each asking
for the `logits` output only. For every transport and client count the load generator runs in
several processes (`--procs`), each an asyncio closed loop of clients/procs connections: gRPC
through grpc.aio channels (one per client, pre-serialized requests), HTTP through a minimal
keep-alive HTTP/1.1 client on asyncio streams, so neither client's parsing cost differs much
from the other's. The server's CPU seconds (all its processes, from /proc) are read before and
after each point: `req / server CPU s` is the efficiency the transports are compared on, robust
to other load on the machine; req/s and latency are also reported. Last, at the highest client
count, each transport's library alone (`floor_server`: uvicorn with an ASGI app that does
nothing, grpc.aio answering ModelInfer with a fixed reply) under the same load: the CPU a
request costs before any of this service's code runs.

    neutreno bench grpc [--clients 1,32,64] [--seconds 8] [--workers 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import FIXTURE, machine, print_markdown
from bench.live_server import ROOT, LiveServer, free_port, process_cpu_seconds

TRANSPORTS = ("HTTP JSON", "HTTP binary", "gRPC binary")
FLOORS = ("HTTP floor", "gRPC floor")  # the libraries alone: see floor_server
FLOOR_REPLY = b'{"ok":true}'
FLOOR_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"11")]
GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"
OUTPUT = "logits"
IMAGES = 16


@dataclass(frozen=True)
class Target:
    """Where and what one load process sends: the HTTP request bytes or gRPC message bytes."""

    transport: str
    host: str
    port: int
    bodies: tuple[bytes, ...]


@dataclass
class Point:
    """One (transport, clients) measurement."""

    transport: str
    clients: int
    ok: int
    failed: int
    seconds: float
    p50_ms: float
    p99_ms: float
    server_cpu_s: float

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def per_cpu_s(self) -> float:
        return self.ok / self.server_cpu_s if self.server_cpu_s else 0.0


def images(meta: dict[str, object]) -> list[np.ndarray]:
    """Fixture images (0..1; the values do not change the cost) shaped as the model's first
    input with batch 1."""
    inputs = meta["inputs"]
    assert isinstance(inputs, list)
    shape = [1 if d == -1 else d for d in inputs[0]["shape"]]
    pixels = np.load(FIXTURE)["images"][:IMAGES].astype(np.float32) / 255.0
    return [p.reshape(shape) for p in pixels]


def http_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n{head}\r\n"
    ).encode() + body


def bodies(transport: str, model: str, name: str, arrays: list[np.ndarray]) -> tuple[bytes, ...]:
    """The pre-built requests of one transport, one per image."""
    path = f"/v2/models/{model}/infer"
    out: list[bytes] = []
    for x in arrays:
        tensor = {"name": name, "datatype": "FP32", "shape": list(x.shape)}
        if transport == "HTTP JSON":
            body = json.dumps(
                {"inputs": [{**tensor, "data": x.ravel().tolist()}], "outputs": [{"name": OUTPUT}]}
            ).encode()
            out.append(http_request(path, body, {"Content-Type": "application/json"}))
        elif transport == "HTTP binary":
            header = json.dumps(
                {
                    "inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
                    "outputs": [{"name": OUTPUT, "parameters": {"binary_data": True}}],
                }
            ).encode()
            out.append(
                http_request(
                    path,
                    header + x.tobytes(),
                    {
                        "Content-Type": "application/octet-stream",
                        "Inference-Header-Content-Length": str(len(header)),
                    },
                )
            )
        else:
            from service.frontend.grpc import inference_pb2 as pb

            request = pb.ModelInferRequest(model_name=model)
            request.inputs.add(name=name, datatype="FP32", shape=x.shape)
            request.outputs.add(name=OUTPUT)
            request.raw_input_contents.append(x.tobytes())
            out.append(request.SerializeToString())
    return tuple(out)


async def _http_loop(target: Target, deadline: float, lat: list[float]) -> int:
    """One keep-alive connection's closed loop; failed (non-200) requests."""
    reader, writer = await asyncio.open_connection(target.host, target.port)
    failed, i = 0, 0
    try:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            writer.write(target.bodies[i % len(target.bodies)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if status == 200:
                lat.append(time.perf_counter() - started)
            else:
                failed += 1
    finally:
        writer.close()
    return failed


async def _grpc_loop(target: Target, deadline: float, lat: list[float]) -> int:
    import grpc

    failed, i = 0, 0
    async with grpc.aio.insecure_channel(f"{target.host}:{target.port}") as channel:
        call = channel.unary_unary(GRPC_METHOD)
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                await call(target.bodies[i % len(target.bodies)], timeout=30)
                lat.append(time.perf_counter() - started)
            except grpc.aio.AioRpcError:
                failed += 1
            i += 1
    return failed


def load_process(
    target: Target, clients: int, start: float, seconds: float
) -> tuple[list[float], int]:
    """One load process: `clients` closed loops from wall time `start` for `seconds`;
    (latencies of the successful requests, failures)."""

    async def run() -> tuple[list[float], int]:
        await asyncio.sleep(max(0.0, start - time.time()))
        deadline = time.monotonic() + seconds
        lat: list[float] = []
        loop = _grpc_loop if target.transport.startswith("gRPC") else _http_loop
        failed = await asyncio.gather(*(loop(target, deadline, lat) for _ in range(clients)))
        return lat, sum(failed)

    return asyncio.run(run())


def measure(
    cpu_seconds: Callable[[], float],
    pool: ProcessPoolExecutor,
    procs: int,
    target: Target,
    clients: int,
    seconds: float,
) -> Point:
    """One point: `clients` closed loops over `procs` processes for `seconds`; the server's
    CPU seconds (`cpu_seconds()`, before and after) give its cost per request."""
    n = min(procs, clients)
    shares = [clients // n + (1 if i < clients % n else 0) for i in range(n)]
    start = time.time() + 0.5  # every process connects and starts together
    cpu0 = cpu_seconds()
    futures = [pool.submit(load_process, target, share, start, seconds) for share in shares]
    results = [f.result() for f in futures]
    cpu = cpu_seconds() - cpu0
    lat = np.array([t for r in results for t in r[0]]) * 1e3
    return Point(
        target.transport,
        clients,
        len(lat),
        sum(r[1] for r in results),
        seconds,
        float(np.percentile(lat, 50)) if lat.size else 0.0,
        float(np.percentile(lat, 99)) if lat.size else 0.0,
        cpu,
    )


async def _echo_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The HTTP floor's app: read the body, answer a small JSON body."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": FLOOR_HEADERS})
    await send({"type": "http.response.body", "body": FLOOR_REPLY})


def floor_server(transport: str, port: int, ready: Any) -> None:
    """A server of the transport's library that does nothing per request: uvicorn (httptools,
    as `neutreno serve` runs it) with a bare ASGI app, or grpc.aio answering ModelInfer with a
    fixed reply. What it costs per request is what the library costs before any of ours."""
    if transport.startswith("HTTP"):
        import uvicorn

        config = uvicorn.Config(
            _echo_asgi, port=port, http="httptools", log_level="error", access_log=False
        )
        server = uvicorn.Server(config)
        asyncio.run(_serve_uvicorn(server, ready))
        return
    import grpc

    async def serve() -> None:
        server = grpc.aio.server()

        async def infer(request: bytes, context: object) -> bytes:
            return FLOOR_REPLY

        service, method = GRPC_METHOD.strip("/").split("/")
        handler = grpc.unary_unary_rpc_method_handler(infer)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {method: handler}),)
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    asyncio.run(serve())


async def _serve_uvicorn(server: Any, ready: Any) -> None:
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    ready.set()
    await task


def floors(
    pool: ProcessPoolExecutor, targets: list[Target], procs: int, clients: int, seconds: float
) -> list[Point]:
    """Each transport's library floor (`floor_server`), under the same load as the service."""
    context = multiprocessing.get_context("spawn")
    points = []
    for target in targets:
        if target.transport == "HTTP binary":  # the same library as HTTP JSON
            continue
        port = free_port()
        ready = context.Event()
        server = context.Process(target=floor_server, args=(target.transport, port, ready))
        server.start()
        try:
            ready.wait(60)
            floor = Target(f"{target.transport.split()[0]} floor", target.host, port, target.bodies)
            measure(lambda: 0.0, pool, procs, floor, 4, 1.0)
            assert server.pid is not None
            cpu = partial(process_cpu_seconds, server.pid)
            points.append(measure(cpu, pool, procs, floor, clients, seconds))
        finally:
            server.terminate()
            server.join(10)
    return points


def markdown(points: list[Point], args: argparse.Namespace) -> str:
    lines = [
        f"Model `{args.model}`, one image per request (v2 infer, `logits` only), "
        f"{args.seconds:g} s per point, load from {args.procs} processes, "
        f"NEUTRENO_WORKERS={args.workers}, one server serving HTTP and gRPC.",
        f"Machine: {machine()}.",
        "",
        "| transport | clients | req/s | p50 ms | p99 ms | server CPU ms/req "
        "| req / server CPU s | vs HTTP JSON (per CPU s) | failures |",
        "| :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = {p.clients: p for p in points if p.transport == "HTTP JSON"}
    order = (*TRANSPORTS, *FLOORS)
    for p in sorted(points, key=lambda p: (p.clients, order.index(p.transport))):
        ref = base.get(p.clients)
        ratio = p.per_cpu_s / ref.per_cpu_s if ref and ref.per_cpu_s else 0.0
        lines.append(
            f"| {p.transport} | {p.clients} | {p.rate:.0f} | {p.p50_ms:.2f} | {p.p99_ms:.2f} | "
            f"{1e3 / p.per_cpu_s if p.per_cpu_s else 0:.2f} | {p.per_cpu_s:.0f} | "
            f"{ratio:.2f}x | {p.failed} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="neutreno bench grpc", description=__doc__.splitlines()[0])
    p.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    p.add_argument("--model", default="fashion-classifier")
    p.add_argument("--clients", default="1,32,64", help="comma-separated concurrency levels")
    p.add_argument("--seconds", type=float, default=8.0, help="seconds per point")
    p.add_argument("--workers", type=int, default=1, help="NEUTRENO_WORKERS")
    p.add_argument("--procs", type=int, default=4, help="load generator processes")
    p.add_argument("--out", type=Path, help="also write the markdown table here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    clients = [int(c) for c in args.clients.split(",")]
    grpc_port = free_port()
    settings = {
        "NEUTRENO_WORKERS": str(args.workers),
        "NEUTRENO_GRPC_PORT": str(grpc_port),
        "NEUTRENO_MAX_QUEUE_SIZE": str(max(256, 4 * max(clients))),
    }
    points: list[Point] = []
    with LiveServer(args.repository, settings) as server:
        server.wait_ready(timeout=300)
        meta = httpx.get(f"{server.url}/v2/models/{args.model}", timeout=10).json()
        arrays = images(meta)
        targets = [
            Target(
                t,
                "127.0.0.1",
                grpc_port if t.startswith("gRPC") else server.port,
                bodies(t, args.model, meta["inputs"][0]["name"], arrays),
            )
            for t in TRANSPORTS
        ]
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.procs, mp_context=context) as pool:
            for target in targets:  # warm up every path (and the pool's processes)
                measure(server.cpu_seconds, pool, args.procs, target, 4, 1.0)
            for c in clients:  # interleaved: each level's three transports run back to back
                for target in targets:
                    points.append(
                        measure(server.cpu_seconds, pool, args.procs, target, c, args.seconds)
                    )
                    print(
                        f"# {target.transport} x{c}: {points[-1].rate:.0f} req/s", file=sys.stderr
                    )
            points += floors(pool, targets, args.procs, max(clients), args.seconds)
    print_markdown(markdown(points, args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
