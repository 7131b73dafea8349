"""How a front end reaches the engine: one interface, an in-process and a multi-process client.

`InprocClient` calls an `EngineCore` living in the same process (tests, `create_app()` used as a
library). `MPClient` talks to the engine process (`service.engine.server`) over a ZeroMQ DEALER
socket: requests carry an id, replies and generation chunks come back on one read loop that
resolves the waiting futures and streams. `start` returns once the engine has loaded its models
(so a front end accepts connections only then, as an in-process engine does). It polls the
engine's status every `STATUS_EVERY_S`; no answer for `DEAD_AFTER_S` means the engine is gone:
readiness fails and every waiting request gets 503 instead of hanging.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import numpy as np
import zmq
import zmq.asyncio

from service import tracing, wire
from service.engine.core import EngineCore
from service.engine.sequence import Chunk, ChunkReader
from service.errors import DeadlineExceeded, ModelNotReady, QueueFull
from service.frontend.generation.validation import ValidRequest

log = logging.getLogger("neutreno.service")

Feeds = dict[str, np.ndarray]


class GenerationStream(Protocol):
    """One completion request's sequences as the front end sees them."""

    requests: list[ValidRequest]
    completion_tokens: int

    def chunks(self) -> AsyncIterator[Chunk]: ...

    def cancel(self) -> None: ...


class EngineClient(Protocol):
    """What front ends ask of the engine."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def status(self) -> dict[str, Any] | None:
        """`EngineCore.status()`'s map, or None while the engine is not answering."""
        ...

    def flush(self) -> None:
        """This front end is draining (the engine drains when the server stops)."""
        ...

    def admit(self, name: str) -> None:
        """Raise now what `run` would refuse (queue full, shutting down)."""
        ...

    async def run(self, name: str, feeds: Feeds, shared: bool = False) -> Feeds:
        """Outputs of one validated request; `shared`: others are in flight with it."""
        ...

    async def generate(self, name: str, requests: list[ValidRequest]) -> GenerationStream: ...

    async def control(self, op: str, name: str | None = None) -> Any:
        """Model repository control: "index" (every version and its state), "load" or
        "unload" a model (`EngineCore.index`, `load`, `unload`)."""
        ...


CONTROL_OPS = ("index", "load", "unload")


class InprocClient:
    """The engine core in this process."""

    def __init__(self, core: EngineCore) -> None:
        self.core = core

    async def start(self) -> None:
        await self.core.start()

    async def stop(self) -> None:
        await self.core.stop()

    def status(self) -> dict[str, Any] | None:
        return self.core.status()

    def flush(self) -> None:
        self.core.flush()

    def admit(self, name: str) -> None:
        self.core.admit(name)

    async def run(self, name: str, feeds: Feeds, shared: bool = False) -> Feeds:
        return await self.core.run(name, feeds, shared)

    async def generate(self, name: str, requests: list[ValidRequest]) -> GenerationStream:
        return self.core.generate(name, requests)

    async def control(self, op: str, name: str | None = None) -> Any:
        return await self.core.control(op, name)


class RemoteStream(ChunkReader):
    """Chunks of one completion request arriving from the engine process."""

    def __init__(self, client: MPClient, rid: int, requests: list[ValidRequest]) -> None:
        super().__init__(requests, asyncio.Queue())
        self.client, self.rid = client, rid

    async def chunks(self) -> AsyncIterator[Chunk]:
        async for chunk in super().chunks():
            yield chunk
        self.client.forget(self.rid)

    def cancel(self) -> None:
        self.client.cancel(self.rid)


class MPClient:
    """The engine in another process, over ZeroMQ IPC (see the module docstring)."""

    STATUS_EVERY_S = 0.25
    DEAD_AFTER_S = 10.0
    REPLY_GRACE_S = 2.0  # beyond the engine's own deadline, before a reply counts as lost

    def __init__(self, address: str, request_timeout_s: float, max_queue_size: int) -> None:
        self.address = address
        self.request_timeout_s = request_timeout_s
        self.max_queue_size = max_queue_size
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[tuple[dict[str, Any], Feeds]]] = {}
        self._streams: dict[int, RemoteStream] = {}
        self._status: dict[str, Any] | None = None
        self._status_at = -float("inf")
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Connect, then wait until the engine reports its models loaded."""
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(self.address)
        self._tasks = [asyncio.create_task(self._read_loop(), name="engine-reader")]
        while self._status is None or not self._status["started"]:
            self._send({"op": "status", "id": 0})
            await asyncio.sleep(0.05)
        self._tasks.append(asyncio.create_task(self._poll_status(), name="engine-status"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._sock.close()
        self._ctx.term()

    @property
    def alive(self) -> bool:
        return time.monotonic() - self._status_at < self.DEAD_AFTER_S

    def status(self) -> dict[str, Any] | None:
        return self._status if self.alive else None

    def flush(self) -> None:
        """Front ends drain their own connections; the engine keeps serving the others."""

    def admit(self, name: str) -> None:
        status = self.status()
        if status is None:
            raise ModelNotReady("the engine is not answering")
        depth = status["depth"].get(name, 0)
        if depth >= self.max_queue_size:
            raise QueueFull(
                f"model {name!r} has {depth} queued requests "
                f"(limit {self.max_queue_size}); retry later",
                1,
            )

    async def run(self, name: str, feeds: Feeds, shared: bool = False) -> Feeds:
        header, outputs = await self._call(
            {"op": "infer", "model": name, "shared": shared, "trace": tracing.carrier()}, feeds
        )
        return outputs

    async def generate(self, name: str, requests: list[ValidRequest]) -> GenerationStream:
        rid = next(self._ids)
        stream = RemoteStream(self, rid, requests)
        self._streams[rid] = stream
        try:
            await self._call(
                {
                    "op": "generate",
                    "model": name,
                    "trace": tracing.carrier(),
                    "requests": [wire.request_to_wire(r) for r in requests],
                },
                rid=rid,
            )
        except BaseException:
            self._streams.pop(rid, None)
            raise
        return stream

    async def control(self, op: str, name: str | None = None) -> Any:
        reply, _ = await self._call({"op": op, "model": name})
        return reply.get("data")

    def cancel(self, rid: int) -> None:
        if self._streams.pop(rid, None) is not None:
            self._send({"op": "cancel", "id": rid})

    def forget(self, rid: int) -> None:
        """A stream has delivered its last chunk."""
        self._streams.pop(rid, None)

    async def _call(
        self, header: dict[str, Any], feeds: Feeds | None = None, rid: int | None = None
    ) -> tuple[dict[str, Any], Feeds]:
        """Send one request and wait for its reply (or raise the engine's error)."""
        if self.status() is None:
            raise ModelNotReady("the engine is not answering")
        rid = next(self._ids) if rid is None else rid
        future = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        self._send({**header, "id": rid}, feeds)
        try:
            reply, tensors = await asyncio.wait_for(
                future, self.request_timeout_s + self.REPLY_GRACE_S
            )
        except TimeoutError:
            raise DeadlineExceeded(
                f"no answer from the engine within {self.request_timeout_s:.3g} s"
            ) from None
        finally:
            self._pending.pop(rid, None)
        if reply.get("error") is not None:
            raise wire.error_from_wire(reply["error"])
        return reply, tensors

    def _send(self, header: dict[str, Any], feeds: Feeds | None = None) -> None:
        self._sock.send_multipart(wire.encode(header, feeds), copy=False)

    async def _read_loop(self) -> None:
        while True:
            frames = await self._sock.recv_multipart(copy=False)
            header, tensors = wire.decode(frames)
            op = header["op"]
            if op == "status":
                self._status, self._status_at = header["status"], time.monotonic()
            elif op == "chunk":
                stream = self._streams.get(header["id"])
                if stream is not None:
                    stream.outbox.put_nowait(wire.chunk_from_wire(header["chunk"]))
            else:
                if "status" in header:  # a control op's reply: the change is visible at once
                    self._status, self._status_at = header["status"], time.monotonic()
                future = self._pending.get(header["id"])
                if future is not None and not future.done():
                    future.set_result((header, tensors))

    async def _poll_status(self) -> None:
        """Ask for the engine's status; when it stops answering, fail whoever waits."""
        while True:
            self._send({"op": "status", "id": 0})
            await asyncio.sleep(self.STATUS_EVERY_S)
            if not self.alive:
                self._fail_all(ModelNotReady("the engine stopped answering"))

    def _fail_all(self, error: ModelNotReady) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        for stream in self._streams.values():
            for request in stream.requests:
                stream.outbox.put_nowait(Chunk(request.index, error=error))
        self._streams.clear()
