"""How a front end reaches the engine: one interface, an in-process and a multi-process client,
and `EngineSet` over several engine processes (NEUTRENO_ENGINES, NEUTRENO_CUDA_DEVICES).

`InprocClient` calls an `EngineCore` living in the same process (tests, `create_app()` used as a
library). `MPClient` talks to the engine process (`service.engine.server`) over a ZeroMQ DEALER
socket read from the event loop's reader callback (no asyncio wrapper: one drain handles every
message that arrived): requests carry an id; a `results` message answers several requests at
once, a `step` message carries token ids for several streams. Token ids become text here
(`GenerationStream`). `start` returns once the engine has loaded its models (so a front end
accepts connections only then, as an in-process engine does). It polls the engine's status
every `STATUS_EVERY_S`; no answer for `DEAD_AFTER_S` means the engine is gone: readiness fails
and every waiting request gets 503 instead of hanging.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import zmq

from service import tracing, wire
from service.engine.core import EngineCore
from service.engine.runtime import LoopMailbox
from service.engine.sequence import Sink
from service.errors import DeadlineExceeded, ModelNotReady, QueueFull, ServiceError
from service.frontend.generation.output import GenerationStream
from service.frontend.generation.tokenizer import TextTokenizer
from service.frontend.generation.validation import ValidRequest
from service.messages import Feeds, SeqOutput
from service.settings import Settings

log = logging.getLogger("neutreno.service")


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

    async def generate(
        self, name: str, requests: list[ValidRequest], tokenizer: TextTokenizer
    ) -> GenerationStream: ...

    async def control(self, op: str, name: str | None = None) -> Any:
        """Model repository control: "index" (every version and its state), "load" or
        "unload" a model (`EngineCore.index`, `load`, `unload`)."""
        ...


class Streams:
    """This front end's open generation streams by id; called with a step's outputs (the
    engine's per-step sink), it hands each stream its own. A stream leaves when it closes
    (read to its end, failed or cancelled)."""

    def __init__(self) -> None:
        self.open: dict[int, GenerationStream] = {}

    def add(self, rid: int, stream: GenerationStream) -> None:
        self.open[rid] = stream

        def forget() -> None:
            self.open.pop(rid, None)

        stream.on_close(forget)

    def __call__(self, outputs: list[SeqOutput]) -> None:
        by_stream: dict[int, list[SeqOutput]] = {}
        for out in outputs:
            by_stream.setdefault(out.rid, []).append(out)
        for rid, outs in by_stream.items():
            stream = self.open.get(rid)
            if stream is not None:
                stream.deliver(outs)

    def fail_all(self, error: ServiceError) -> None:
        for stream in self.open.values():
            stream.fail(error)
        self.open.clear()


class InprocClient:
    """The engine core in this process."""

    def __init__(self, core: EngineCore) -> None:
        self.core = core
        self._ids = itertools.count(1)
        self._streams = Streams()
        self._sink: Sink | None = None  # the streams, reached from the models' threads

    async def start(self) -> None:
        self._sink = LoopMailbox(self._streams).post
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

    async def generate(
        self, name: str, requests: list[ValidRequest], tokenizer: TextTokenizer
    ) -> GenerationStream:
        rid, sink = next(self._ids), self._sink
        assert sink is not None, "generate before start"

        def cancel(index: int | None) -> None:
            self.core.cancel(name, sink, rid, index)

        stream = GenerationStream(requests, tokenizer, cancel)
        self._streams.add(rid, stream)
        try:
            self.core.generate(name, rid, [r.to_engine() for r in requests], sink)
        except BaseException:
            del self._streams.open[rid]
            raise
        return stream

    async def control(self, op: str, name: str | None = None) -> Any:
        return await self.core.control(op, name)


Reply = tuple[dict[str, Any], Feeds]


class MPClient:
    """The engine in another process, over ZeroMQ IPC (see the module docstring)."""

    STATUS_EVERY_S = 0.25
    DEAD_AFTER_S = 10.0
    REPLY_GRACE_S = 2.0  # beyond the engine's own deadline, before a reply counts as lost

    def __init__(self, address: str, request_timeout_s: float, max_queue_size: int) -> None:
        self.address = address
        self.request_timeout_s = request_timeout_s
        self.max_queue_size = max_queue_size
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._streams = Streams()
        self._status: dict[str, Any] | None = None
        self._status_at = -float("inf")
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_scheduled = False

    async def start(self) -> None:
        """Connect, then wait until the engine reports its models loaded."""
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 0)  # requests are bounded by the front end's limits
        self._sock.connect(self.address)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(wire.socket_fd(self._sock), self._drain)
        while self._status is None or not self._status["started"]:
            self._send({"op": "status", "id": 0})
            await asyncio.sleep(0.05)
        self._tasks.append(asyncio.create_task(self._poll_status(), name="engine-status"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._loop is not None:
            self._loop.remove_reader(wire.socket_fd(self._sock))
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
        header: dict[str, Any] = {"op": "infer", "model": name, "shared": shared}
        if trace := tracing.carrier():
            header["trace"] = trace
        _, outputs = await self._call(header, feeds)
        return outputs

    async def generate(
        self, name: str, requests: list[ValidRequest], tokenizer: TextTokenizer
    ) -> GenerationStream:
        rid = next(self._ids)
        stream = GenerationStream(requests, tokenizer, self._canceller(name, rid))
        self._streams.add(rid, stream)
        try:
            await self._call(
                {
                    "op": "generate",
                    "model": name,
                    "trace": tracing.carrier(),
                    "requests": [wire.request_to_wire(r.to_engine()) for r in requests],
                },
                rid=rid,
            )
        except BaseException:
            self._streams.open.pop(rid, None)
            raise
        return stream

    def _canceller(self, name: str, rid: int) -> Callable[[int | None], None]:
        def cancel(index: int | None) -> None:
            self._send({"op": "cancel", "id": rid, "model": name, "index": index})

        return cancel

    async def control(self, op: str, name: str | None = None) -> Any:
        reply, _ = await self._call({"op": op, "model": name})
        return reply.get("data")

    async def _call(
        self, header: dict[str, Any], feeds: Feeds | None = None, rid: int | None = None
    ) -> Reply:
        """Send one request and wait for its reply (or raise the engine's error)."""
        if self.status() is None:
            raise ModelNotReady("the engine is not answering")
        assert self._loop is not None
        rid = next(self._ids) if rid is None else rid
        future = self._loop.create_future()
        self._pending[rid] = future
        self._send({**header, "id": rid}, feeds)
        try:
            async with asyncio.timeout(self.request_timeout_s + self.REPLY_GRACE_S):
                reply, tensors = await future
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
        if not self._drain_scheduled and self._loop is not None:  # a send can eat the FD's edge
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        """Handle every message that has arrived (the FD is edge-triggered)."""
        self._drain_scheduled = False
        sock = self._sock
        while wire.readable(sock):
            frames = sock.recv_multipart(wire.NOBLOCK)  # copies: cheaper than Frames when small
            try:
                self._handle(frames)
            except Exception:  # a message this front end cannot read must not stop the others
                log.exception("front end could not read an engine message")

    def _handle(self, frames: list[Any]) -> None:
        header, tensors = wire.decode(frames[:1])
        op = header["op"]
        if op == "step":
            self._streams(wire.outputs_from_wire(header["out"]))
        elif op == "results":
            for rid, outputs, error in wire.decode_results(header, frames[1:]):
                self._resolve(rid, {"error": error}, outputs or {})
        elif op == "status":
            self._status, self._status_at = header["status"], time.monotonic()
        else:
            if "status" in header:  # a control op's reply: the change is visible at once
                self._status, self._status_at = header["status"], time.monotonic()
            self._resolve(header["id"], header, tensors)

    def _resolve(self, rid: int, reply: dict[str, Any], tensors: Feeds) -> None:
        future = self._pending.get(rid)
        if future is not None and not future.done():
            future.set_result((reply, tensors))

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
        self._streams.fail_all(error)


class EngineSet:
    """Several engine processes as one: each request goes to the least loaded engine (requests
    this front end has in flight there, plus the engine's queued and running work); model
    control goes to all; the status is one coherent picture (None while any engine is silent,
    so readiness fails and requests get 503 as with one engine)."""

    def __init__(self, engines: list[MPClient]) -> None:
        self.engines = engines
        self._inflight = [0] * len(engines)

    async def start(self) -> None:
        await asyncio.gather(*(e.start() for e in self.engines))

    async def stop(self) -> None:
        await asyncio.gather(*(e.stop() for e in self.engines))

    def status(self) -> dict[str, Any] | None:
        statuses = [e.status() for e in self.engines]
        if any(s is None for s in statuses):
            return None
        first, rest = statuses[0], statuses[1:]
        assert first is not None
        merged = dict(first)
        for other in rest:
            assert other is not None
            merged["started"] = merged["started"] and other["started"]
            merged["draining"] = merged["draining"] or other["draining"]
            merged["failures"] = {**other["failures"], **merged["failures"]}
            merged["reasons"] = list(dict.fromkeys([*merged["reasons"], *other["reasons"]]))
            for key in ("depth", "running"):
                merged[key] = {
                    n: merged[key].get(n, 0) + other[key].get(n, 0)
                    for n in {*merged[key], *other[key]}
                }
        return merged

    def flush(self) -> None:
        for engine in self.engines:
            engine.flush()

    def _least_loaded(self, name: str) -> int:
        def load(i: int) -> int:
            status = self.engines[i].status()
            if status is None:
                return 1 << 30
            return self._inflight[i] + status["depth"].get(name, 0) + status["running"].get(name, 0)

        return min(range(len(self.engines)), key=load)

    def admit(self, name: str) -> None:
        self.engines[self._least_loaded(name)].admit(name)

    async def run(self, name: str, feeds: Feeds, shared: bool = False) -> Feeds:
        i = self._least_loaded(name)
        self._inflight[i] += 1
        try:
            return await self.engines[i].run(name, feeds, shared)
        finally:
            self._inflight[i] -= 1

    async def generate(
        self, name: str, requests: list[ValidRequest], tokenizer: TextTokenizer
    ) -> GenerationStream:
        i = self._least_loaded(name)
        self._inflight[i] += 1
        try:
            stream = await self.engines[i].generate(name, requests, tokenizer)
        except BaseException:
            self._inflight[i] -= 1
            raise
        stream.on_close(lambda: self._release(i))
        return stream

    def _release(self, i: int) -> None:
        self._inflight[i] -= 1

    async def control(self, op: str, name: str | None = None) -> Any:
        if op == "index":
            return await self.engines[0].control(op, name)
        results = await asyncio.gather(
            *(e.control(op, name) for e in self.engines), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results[0]


def connect(addresses: list[str], settings: Settings) -> EngineClient:
    """The client a front-end process uses: one engine, or the set of them."""
    clients = [MPClient(a, settings.request_timeout_s, settings.max_queue_size) for a in addresses]
    return clients[0] if len(clients) == 1 else EngineSet(clients)
