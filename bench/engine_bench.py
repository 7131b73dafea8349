"""`neutreno bench engine`: host CPU per request, per token and per step, with bundles that
compute almost nothing, so what is measured is the serving code, not the model.

The bundles keep the shipped models' contracts (fashion-classifier: 28x28 grey in, 10 classes
out; kjv-lm: the real 4,096-token vocabulary and tokenizer) at depth 1 and width 16, built with
the exporter into a scratch repository. One `neutreno serve` (NEUTRENO_WORKERS=1) serves them;
load comes through HTTP: wrk for classify (JSON base64 PNG, 32 connections), an asyncio client
for generation (non-streaming completions with ignore_eos, so token counts are exact). The
engine and front-end processes' CPU seconds are read from /proc before and after each phase
and divided by the requests or tokens served (the server's own counters). `--tree` serves from
another checkout of this repository, to measure an older engine with the same harness.

    neutreno bench engine [--seconds 20] [--tree PATH] [--out docs/engine.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import machine, print_markdown, request_bodies, run_wrk, write_wrk_files
from bench.live_server import (
    ROOT,
    LiveServer,
    process_cpu_seconds,
    process_tree,
    thread_cpu_seconds,
)

CLASSIFIER = "fashion-classifier"
LM = "kjv-lm"
TINY = {"depth": 1, "dim": 16, "heads": 2}


def build_bundles(repo: Path) -> None:
    """Compute-free classifier and LM bundles in `repo`, exported as users export theirs."""
    import torch

    from export.cli import export_checkpoint
    from models import create_model, get_config
    from models.checkpoint import DatasetFacts, save_checkpoint

    shipped = json.loads((ROOT / f"model_repository/{CLASSIFIER}/2/manifest.json").read_text())
    pre = shipped["preprocessing"]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        vit = Path(tmp) / "vit"
        cfg = get_config("vit-fashion", **TINY)
        facts = DatasetFacts(
            "compute-free bench bundle", shipped["labels"], pre["mean"], pre["std"]
        )
        sample = (torch.rand(4, 1, 28, 28), "random images")
        save_checkpoint(vit, create_model("vit-fashion", **TINY), cfg, facts, {}, sample)
        export_checkpoint(vit, repo / CLASSIFIER / "1", name=CLASSIFIER)
        lm = Path(tmp) / "lm"
        lm_cfg = get_config("lm-kjv", **TINY)
        lm_facts = DatasetFacts("compute-free bench bundle", eos_token="<|endoftext|>")
        save_checkpoint(lm, create_model("lm-kjv", **TINY), lm_cfg, lm_facts, {})
        shutil.copy(ROOT / "checkpoints/kjv-lm/tokenizer.json", lm / "tokenizer.json")
        export_checkpoint(lm, repo / LM / "1", name=LM)


@dataclass
class Roles:
    """The server's processes: the engine and the front end(s)."""

    engine: int
    frontends: list[int]

    @classmethod
    def of(cls, server: LiveServer) -> Roles:
        """By process title; an older tree without titles: the supervisor's first child after
        multiprocessing's resource tracker (the engine is started before the front ends)."""
        engines, frontends = server.role_pids("engine"), server.role_pids("front end")
        if engines:
            return cls(engines[0], frontends)
        cmdlines = {
            p: Path(f"/proc/{p}/cmdline").read_bytes()
            for p in sorted(process_tree(server.proc.pid))
            if p != server.proc.pid
        }
        children = [p for p, cmd in cmdlines.items() if b"resource_tracker" not in cmd]
        return cls(children[0], children[1:])

    def cpu(self) -> tuple[float, float, float]:
        """(engine, its event-loop thread, front ends) CPU seconds so far."""
        return (
            process_cpu_seconds(self.engine),
            thread_cpu_seconds(self.engine, self.engine),
            sum(map(process_cpu_seconds, self.frontends)),
        )


@dataclass
class Row:
    """One phase: work done and the CPU each side spent on it (`loop_s`: the part of the
    engine's that its event-loop thread spent, the rest being model runs and ZeroMQ's I/O)."""

    name: str
    unit: str
    count: float
    seconds: float
    engine_s: float
    loop_s: float
    frontend_s: float | None  # None: no front end in this phase

    def cells(self) -> str:
        rate = self.count / self.seconds
        engine, loop = (s / self.count * 1e6 for s in (self.engine_s, self.loop_s))
        front = "-" if self.frontend_s is None else f"{self.frontend_s / self.count * 1e6:,.0f} us"
        return (
            f"| {self.name} | {rate:,.0f} {self.unit}/s | {engine:,.0f} us | {loop:,.0f} us "
            f"| {front} |"
        )


def measure(
    server: LiveServer,
    roles: Roles,
    name: str,
    unit: str,
    counter: Callable[[], float],
    load: Callable[[], object],
) -> Row:
    """Run `load`; CPU of each side over the `counter` delta (requests or tokens)."""
    before, count0, started = roles.cpu(), counter(), time.perf_counter()
    load()
    seconds, after, count = time.perf_counter() - started, roles.cpu(), counter() - count0
    engine, loop, front = (a - b for a, b in zip(after, before, strict=True))
    return Row(name, unit, count, seconds, engine, loop, front)


async def _streams(url: str, n: int, seconds: float, tokens: Callable[[], int]) -> None:
    """`n` clients each sending completions back to back for `seconds`."""
    stop = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one() -> None:
            while time.perf_counter() < stop:
                body = {
                    "model": LM,
                    "prompt": "And God said",
                    "max_tokens": tokens(),
                    "temperature": 0,
                    "ignore_eos": True,
                }
                r = await client.post("/v1/completions", json=body)
                r.raise_for_status()

        await asyncio.gather(*(one() for _ in range(n)))


def generation(url: str, n: int, seconds: float, tokens: Callable[[], int]) -> Callable[[], None]:
    def run() -> None:
        asyncio.run(_streams(url, n, seconds, tokens))

    return run


def bench(repo: Path, tree: Path, seconds: float) -> list[Row]:
    settings = {
        "NEUTRENO_WORKERS": "1",
        "NEUTRENO_MAX_QUEUE_SIZE": "4096",
        "NEUTRENO_MAX_RUNNING_SEQUENCES": "64",  # 64 streams decode together
    }
    with LiveServer(repo, settings, tree=tree) as server:
        server.wait_ready(timeout=180)
        roles = Roles.of(server)
        scratch = Path(tempfile.mkdtemp(prefix="engine-bench-"))
        files = write_wrk_files(scratch, request_bodies(64))
        path = f"/v1/models/{CLASSIFIER}/classify"
        run_wrk(server.url, path, files, 32, 3)  # warm-up

        def requests() -> float:
            return server.metric(
                "neutreno_requests_total",
                model=CLASSIFIER,
                endpoint="/v1/models/{name}/classify",
                status="200",
            )

        def tokens() -> float:
            return server.metric("neutreno_generated_tokens_total", model=LM)

        rng = random.Random(0)
        phases: list[tuple[str, str, Callable[[], float], Callable[[], object]]] = [
            (
                "classify, 32 clients (wrk)",
                "req",
                requests,
                lambda: run_wrk(server.url, path, files, 32, seconds),
            ),
            (
                "generation, 64 streams, 64 tokens each (aligned)",
                "tok",
                tokens,
                generation(server.url, 64, seconds, lambda: 64),
            ),
            (
                "generation, 64 streams, 8-120 tokens (staggered)",
                "tok",
                tokens,
                generation(server.url, 64, seconds, lambda: rng.randint(8, 120)),
            ),
            (
                "generation, 1 stream, 64 tokens",
                "tok",
                tokens,
                generation(server.url, 1, seconds, lambda: 64),
            ),
        ]
        rows = [measure(server, roles, *phase) for phase in phases]
        shutil.rmtree(scratch, ignore_errors=True)
        return rows


def table(rows: list[Row], tree: Path) -> str:
    lines = [
        f"Engine host cost, compute-free bundles ({machine()}; server from {tree}):",
        "",
        "| load | served | engine CPU per unit | of which its loop thread "
        "| front-end CPU per unit |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(r.cells() for r in rows),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="neutreno bench engine", description=__doc__)
    ap.add_argument("--seconds", type=float, default=20.0, help="per phase")
    ap.add_argument("--tree", type=Path, default=ROOT, help="checkout whose server to run")
    ap.add_argument("--repo", type=Path, help="reuse (or keep) the bundles in this folder")
    ap.add_argument("--socket-only", action="store_true", help="skip the HTTP phases")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    repo = args.repo or Path(tempfile.mkdtemp(prefix="engine-bundles-"))
    if not (repo / LM / "1" / "manifest.json").is_file():
        build_bundles(repo)
    rows = [] if args.socket_only else bench(repo, args.tree.resolve(), args.seconds)
    if args.tree.resolve() == ROOT:
        rows += socket_rows(repo, args.seconds)
    print_markdown(table(rows, args.tree), args.out)
    return 0


class EngineDriver:
    """Straight into one engine process's socket, as a front end speaks to it (service.wire):
    no HTTP, no front end, so its CPU per request or token is the engine's alone."""

    def __init__(self, repo: Path, tree: Path, settings: dict[str, Any] | None = None) -> None:
        import multiprocessing

        import zmq

        from service.engine.server import engine_main

        self.dir = Path(tempfile.mkdtemp(prefix="engine-socket-"))
        self.address = address = f"ipc://{self.dir / 'engine.sock'}"
        ctx = multiprocessing.get_context("spawn")
        self.stop = ctx.Event()
        overrides = {"model_repository": str(repo), "log_level": "warning", **(settings or {})}
        self.proc = ctx.Process(target=engine_main, args=(overrides, address, self.stop))
        self.proc.start()
        self.zmq = zmq.Context()
        self.sock = self.zmq.socket(zmq.DEALER)
        self.sock.connect(address)
        self.ids = 0

    def send(self, header: dict[str, object], feeds: dict[str, np.ndarray] | None = None) -> int:
        from service import wire

        self.ids += 1
        self.sock.send_multipart(wire.encode({**header, "id": self.ids}, feeds), copy=False)
        return self.ids

    def receive(self) -> tuple[dict[str, Any], list[Any]]:
        from service import wire

        frames = self.sock.recv_multipart(copy=False)
        header, _ = wire.decode(frames[:1])
        return header, frames[1:]

    def wait_started(self) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            self.send({"op": "status"})
            if self.sock.poll(500):
                header, _ = self.receive()
                status = header.get("status")
                if isinstance(status, dict) and status.get("started"):
                    return
        raise RuntimeError("the engine did not start")

    def classify(self, seconds: float, window: int = 32) -> int:
        """Requests answered in `seconds` with `window` in flight (one image each)."""
        images = np.load(ROOT / "tests/fixtures/fashion-mnist-test-200.npz")["images"]
        feeds = [
            {"pixel_values": ((im / 255.0 - 0.286) / 0.353)[None, None].astype(np.float32)}
            for im in images[:64]
        ]
        header = {"op": "infer", "model": CLASSIFIER, "shared": True}
        for i in range(window):
            self.send(header, feeds[i % 64])
        done, stop = 0, time.perf_counter() + seconds
        while time.perf_counter() < stop:
            reply, _ = self.receive()
            if reply["op"] != "results":
                continue
            for _ in reply["items"]:
                done += 1
                self.send(header, feeds[done % 64])
        return done

    def generate(self, seconds: float, streams: int, tokens: Callable[[], int]) -> int:
        """Tokens received in `seconds` with `streams` sequences always running."""
        from service import wire
        from service.messages import GenerateRequest

        def submit() -> None:
            request = GenerateRequest(0, (5, 6, 7), tokens(), ignore_eos=True)
            self.send({"op": "generate", "model": LM, "requests": [wire.request_to_wire(request)]})

        for _ in range(streams):
            submit()
        count, running, stop = 0, streams, time.perf_counter() + seconds
        while running:  # past `seconds`, let the running sequences end without new ones
            reply, _ = self.receive()
            if reply["op"] != "step":
                continue
            for out in wire.outputs_from_wire(reply["out"]):
                count += len(out.tokens)
                if out.finish is not None:
                    running -= 1
                    if time.perf_counter() < stop:
                        running += 1
                        submit()
        return count

    def close(self) -> None:
        self.stop.set()
        self.proc.join(60)
        self.sock.close(0)
        self.zmq.term()
        shutil.rmtree(self.dir, ignore_errors=True)


def socket_rows(repo: Path, seconds: float) -> list[Row]:
    """The engine alone, driven through its socket (this tree's wire)."""
    driver = EngineDriver(repo, ROOT, {"max_running_sequences": 64})
    try:
        driver.wait_started()
        assert driver.proc.pid is not None
        pid = driver.proc.pid
        rng = random.Random(0)
        phases: list[tuple[str, str, Callable[[], int]]] = [
            ("engine socket: classify, 32 in flight", "req", lambda: driver.classify(seconds)),
            (
                "engine socket: 64 streams, 64 tokens (aligned)",
                "tok",
                lambda: driver.generate(seconds, 64, lambda: 64),
            ),
            (
                "engine socket: 64 streams, 8-120 tokens (staggered)",
                "tok",
                lambda: driver.generate(seconds, 64, lambda: rng.randint(8, 120)),
            ),
            ("engine socket: 1 stream", "tok", lambda: driver.generate(seconds, 1, lambda: 64)),
        ]
        rows = []
        for name, unit, load in phases:
            cpu0, loop0 = process_cpu_seconds(pid), thread_cpu_seconds(pid, pid)
            started = time.perf_counter()
            count = load()
            elapsed, cpu = time.perf_counter() - started, process_cpu_seconds(pid) - cpu0
            loop = thread_cpu_seconds(pid, pid) - loop0
            rows.append(Row(name, unit, count, elapsed, cpu, loop, None))
        return rows
    finally:
        driver.close()
