"""The engine process: an `EngineCore` behind a ZeroMQ ROUTER socket.

`engine_main` is the process entry point `neutreno serve` starts (one per device). It binds the
socket before loading the bundles, so front ends see "models are still loading" instead of
nothing, then serves until the supervisor sets `stop`: it refuses new work, finishes everything
accepted (queued batches, running sequences) and exits 0. It ignores SIGINT and SIGTERM (the
supervisor drains the front ends first, then the engine) and exits when its parent dies.
Each request runs as its own task, so requests from every front end meet in one batcher.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing.synchronize
import os
import signal
from typing import Any

import zmq
import zmq.asyncio

from service import tracing, wire
from service.engine.core import EngineCore
from service.engine.scheduler import Submission
from service.errors import InferenceFailed, ServiceError
from service.frontend.client import CONTROL_OPS
from service.logs import configure_logging
from service.metrics import Metrics
from service.settings import Overrides, Settings

log = logging.getLogger("neutreno.service")

Identity = bytes


class EngineServer:
    """Dispatches front-end messages to the core and sends replies back to their sender."""

    def __init__(self, core: EngineCore, address: str) -> None:
        self.core = core
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(address)
        self._tasks: set[asyncio.Task[None]] = set()
        self._streams: dict[tuple[Identity, int], tuple[Submission, asyncio.Task[None]]] = {}

    async def serve(self) -> None:
        """Receive forever (cancelled by `close`)."""
        while True:
            frames = await self._sock.recv_multipart(copy=False)
            identity = frames[0].bytes
            header, tensors = wire.decode(frames[1:])
            try:
                self._dispatch(identity, header, tensors)
            except Exception as exc:  # one bad message must not stop the engine answering
                log.exception("engine could not handle %s", header.get("op"))
                error = InferenceFailed(f"the engine could not handle the request: {exc}")
                self._send(
                    identity,
                    {"op": "result", "id": header.get("id", 0), "error": wire.error_to_wire(error)},
                )

    def _dispatch(self, identity: Identity, header: dict[str, Any], tensors: wire.Feeds) -> None:
        op, rid = header["op"], header["id"]
        if op == "status":
            self._send(identity, {"op": "status", "id": rid, "status": self.core.status()})
        elif op == "infer":
            self._spawn(self._infer(identity, rid, header, tensors))
        elif op == "generate":
            self._generate(identity, rid, header)
        elif op in CONTROL_OPS:
            self._spawn(self._control(identity, rid, op, header.get("model")))
        elif op == "cancel":
            stream = self._streams.pop((identity, rid), None)
            if stream is not None:  # cancelled sequences send nothing more: stop forwarding
                stream[0].cancel()
                stream[1].cancel()

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _infer(
        self, identity: Identity, rid: int, header: dict[str, Any], feeds: wire.Feeds
    ) -> None:
        model = header["model"]
        try:
            with tracing.attached(header.get("trace")):
                outputs = await self.core.run(model, feeds, header.get("shared", False))
        except ServiceError as exc:
            self._send(identity, {"op": "result", "id": rid, "error": wire.error_to_wire(exc)})
            return
        except Exception as exc:  # a bug must reach the waiting request, not kill the engine
            log.exception("engine run on %s failed", model)
            error = InferenceFailed(f"inference failed on {model!r}: {exc}")
            self._send(identity, {"op": "result", "id": rid, "error": wire.error_to_wire(error)})
            return
        self._send(identity, {"op": "result", "id": rid}, outputs)

    async def _control(self, identity: Identity, rid: int, op: str, name: str | None) -> None:
        """A repository-control op; the reply carries the new status so front ends follow."""
        try:
            data = await self.core.control(op, name)
        except ServiceError as exc:
            self._send(identity, {"op": "result", "id": rid, "error": wire.error_to_wire(exc)})
            return
        self._send(
            identity, {"op": "result", "id": rid, "data": data, "status": self.core.status()}
        )

    def _generate(self, identity: Identity, rid: int, header: dict[str, Any]) -> None:
        try:
            requests = [wire.request_from_wire(r) for r in header["requests"]]
            with tracing.attached(header.get("trace")):
                submission = self.core.generate(header["model"], requests)
        except ServiceError as exc:
            self._send(identity, {"op": "result", "id": rid, "error": wire.error_to_wire(exc)})
            return
        self._send(identity, {"op": "result", "id": rid})
        task = self._spawn(self._forward(identity, rid, submission))
        self._streams[(identity, rid)] = (submission, task)

    async def _forward(self, identity: Identity, rid: int, submission: Submission) -> None:
        try:
            async for chunk in submission.chunks():
                self._send(identity, {"op": "chunk", "id": rid, "chunk": wire.chunk_to_wire(chunk)})
        finally:
            self._streams.pop((identity, rid), None)

    def _send(
        self, identity: Identity, header: dict[str, Any], tensors: wire.Feeds | None = None
    ) -> None:
        self._sock.send_multipart([identity, *wire.encode(header, tensors)], copy=False)

    async def finish(self) -> None:
        """Wait until every accepted request has been answered and every stream forwarded."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def close(self) -> None:
        self._sock.close()
        self._ctx.term()


async def run_engine(
    settings: Settings, address: str, stop: multiprocessing.synchronize.Event
) -> None:
    """Bind, load, serve until `stop` is set (or the parent dies), then drain."""
    core = EngineCore(settings, Metrics())
    server = EngineServer(core, address)
    receiving = asyncio.create_task(server.serve(), name="engine-receive")
    parent = os.getppid()
    await core.start()
    while not stop.is_set() and os.getppid() == parent:
        await asyncio.sleep(0.1)
    log.info("engine draining")
    core.flush()
    await core.stop()
    await server.finish()
    receiving.cancel()
    server.close()


def engine_main(
    overrides: Overrides, address: str, stop: multiprocessing.synchronize.Event
) -> None:
    """Process entry point (spawned by `neutreno serve`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    settings = Settings(**overrides)
    configure_logging(settings)
    tracing.configure_from_env()
    asyncio.run(run_engine(settings, address, stop))
