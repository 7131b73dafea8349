"""The engine process: an `EngineCore` behind a ZeroMQ ROUTER socket, per-batch host work.

`engine_main` is the process entry point `neutreno serve` starts (one per device). It binds the
socket before loading the bundles, so front ends see "models are still loading" instead of
nothing, then serves until the supervisor sets `stop`: it refuses new work, finishes everything
accepted (queued batches, running sequences) and exits 0. It ignores SIGINT and SIGTERM (the
supervisor drains the front ends first, then the engine) and exits when its parent dies.

Host cost is per batch and per step, not per request or token (vLLM's engine core): the socket
is a plain (not asyncio) ZeroMQ socket read from the event loop's reader callback, draining every
queued message at once; an `infer` is a queue entry with a reply callback (no task, no future);
replies produced in one turn of the loop (a batch) are grouped per front end and sent as ONE
`results` message each. Generation outputs skip the loop: a model's thread sends each run's
outputs as ONE `step` message per front end as soon as they are sampled. A front end silent
for `SILENT_AFTER_S` (front ends poll the status 4 times a second) is taken as dead: its
sequences are cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing.synchronize
import os
import signal
import threading
import time
from typing import Any

import zmq

from service import tracing, wire
from service.engine.core import EngineCore
from service.engine.runtime import CUDA, RuntimeSetupError, call_in_loop, choose_providers
from service.errors import InferenceFailed, ServiceError
from service.logs import configure_logging
from service.messages import Feeds, SeqOutput
from service.metrics import Metrics
from service.process import set_title
from service.settings import Overrides, Settings

log = logging.getLogger("neutreno.service")

Identity = bytes
CONTROL_OPS = ("index", "load", "unload")


class FrontEnd:
    """One connected front end: replies waiting to go out to it; calling it (on a model's
    thread) is the generation scheduler's per-run sink for its sequences."""

    def __init__(self, server: EngineServer, identity: Identity) -> None:
        self.server, self.identity = server, identity
        self.results: list[wire.Result] = []
        self.seen = time.monotonic()
        self.models: set[str] = set()  # models it has generated on (to cancel when it dies)

    def __call__(self, outputs: list[SeqOutput]) -> None:
        """On the model's thread: one `step` message with these outputs, sent now (they never
        wait for the event loop)."""
        self.server.send_from_thread(
            self.identity, {"op": "step", "out": wire.outputs_to_wire(outputs)}
        )

    def reply(self, rid: int, outputs: Feeds | None, error: ServiceError | None) -> None:
        self.results.append((rid, outputs, None if error is None else wire.error_to_wire(error)))
        self.server.schedule_flush(self)


class EngineServer:
    """Reads front-end messages into the core and sends replies back to their sender.

    The socket is used from the event loop (reads, replies) and from the models' threads
    (generation outputs), one at a time under `_lock`; ZeroMQ allows a socket to move between
    threads with a full memory barrier, which the lock is."""

    SILENT_AFTER_S = 5.0

    def __init__(self, core: EngineCore, address: str) -> None:
        self.core = core
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 0)  # replies are bounded by the accepted work
        self._sock.bind(address)
        self._lock = threading.Lock()
        self._frontends: dict[Identity, FrontEnd] = {}
        self._dirty: dict[Identity, FrontEnd] = {}  # front ends with something to send
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Read the socket from this event loop (the ZeroMQ FD signals new messages)."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(wire.socket_fd(self._sock), self._drain)
        self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        """Handle every message queued on the socket (the FD is edge-triggered: read until
        the socket says there is nothing left)."""
        sock = self._sock
        while True:
            with self._lock:
                if sock.closed or not wire.readable(sock):
                    return
                frames = sock.recv_multipart(wire.NOBLOCK)  # copies: cheaper than Frames if small
            frontend = self._frontend(frames[0])
            header: dict[str, Any] = {}
            try:
                header, tensors = wire.decode(frames[1:])
                self._dispatch(frontend, header, tensors)
            except Exception as exc:  # one bad message must not stop the engine answering
                log.exception("engine could not handle a %s message", header.get("op"))
                error = InferenceFailed(f"the engine could not handle the request: {exc}")
                frontend.reply(header.get("id", 0), None, error)

    def _frontend(self, identity: Identity) -> FrontEnd:
        frontend = self._frontends.get(identity)
        if frontend is None:
            frontend = self._frontends[identity] = FrontEnd(self, identity)
        frontend.seen = time.monotonic()
        return frontend

    def _dispatch(self, frontend: FrontEnd, header: dict[str, Any], tensors: Feeds) -> None:
        op, rid = header["op"], header["id"]
        if op == "status":
            self._send(frontend.identity, {"op": "status", "id": rid, "status": self.core.status()})
        elif op == "infer":
            self._infer(frontend, rid, header, tensors)
        elif op == "generate":
            self._generate(frontend, rid, header)
        elif op == "cancel":
            self.core.cancel(header["model"], frontend, rid, header.get("index"))
        elif op in CONTROL_OPS:
            self._spawn(self._control(frontend, rid, op, header.get("model")))

    def _infer(self, frontend: FrontEnd, rid: int, header: dict[str, Any], feeds: Feeds) -> None:
        def reply(outputs: Feeds | None, error: ServiceError | None) -> None:
            frontend.reply(rid, outputs, error)

        try:
            with tracing.attached(header.get("trace")):
                self.core.enqueue(header["model"], feeds, header.get("shared", False), reply)
        except ServiceError as exc:
            frontend.reply(rid, None, exc)

    def _generate(self, frontend: FrontEnd, rid: int, header: dict[str, Any]) -> None:
        model = header["model"]
        try:
            requests = [wire.request_from_wire(r) for r in header["requests"]]
            with tracing.attached(header.get("trace")):
                self.core.generate(model, rid, requests, frontend)
        except ServiceError as exc:
            frontend.reply(rid, None, exc)
            return
        frontend.models.add(model)
        frontend.reply(rid, None, None)

    async def _control(self, frontend: FrontEnd, rid: int, op: str, name: str | None) -> None:
        """A repository-control op; the reply carries the new status so front ends follow."""
        try:
            data = await self.core.control(op, name)
        except ServiceError as exc:
            frontend.reply(rid, None, exc)
            return
        self._send(
            frontend.identity,
            {"op": "result", "id": rid, "data": data, "status": self.core.status()},
        )
        self._drain()  # sending may have consumed the FD's edge

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def schedule_flush(self, frontend: FrontEnd) -> None:
        """Send `frontend`'s pending replies at the end of this turn of the loop, together
        with whatever else the same batch or step produces for it."""
        if not self._dirty:
            assert self._loop is not None
            self._loop.call_soon(self.flush)
        self._dirty[frontend.identity] = frontend

    def flush(self) -> None:
        """One `results` message per front end with replies pending."""
        dirty, self._dirty = self._dirty, {}
        for frontend in dirty.values():
            results, frontend.results = frontend.results, []
            if results:
                self._send_results(frontend.identity, results)
        self._drain()  # sending may have consumed the FD's edge

    def _send_results(self, identity: Identity, results: list[wire.Result]) -> None:
        try:
            frames = wire.encode_results(results)
        except wire.Unencodable:  # answer each alone, so one bad reply fails only itself
            for result in results:
                self._send_results_alone(identity, result)
            return
        self._send_frames(identity, frames)

    def _send_results_alone(self, identity: Identity, result: wire.Result) -> None:
        try:
            frames = wire.encode_results([result])
        except wire.Unencodable as exc:
            frames = _unencodable(result[0], exc)
        self._send_frames(identity, frames)

    def _send(self, identity: Identity, header: dict[str, Any]) -> bool:
        try:
            frames = wire.encode(header)
        except wire.Unencodable as exc:
            log.error("engine could not encode a %s reply: %s", header.get("op"), exc)
            frames = _unencodable(header.get("id", 0), exc)
        return self._send_frames(identity, frames)

    def _send_frames(self, identity: Identity, frames: wire.Frames) -> bool:
        """Send (nothing once closed); whether a message is waiting to be read."""
        with self._lock:
            if self._sock.closed:
                return False
            self._sock.send_multipart([identity, *frames], copy=False)
            return wire.readable(self._sock)

    def send_from_thread(self, identity: Identity, header: dict[str, Any]) -> None:
        """`_send` from a model's thread. The send may consume the edge of the socket's FD that
        would have woken the loop for a message just in, so then the loop is asked to read."""
        if self._send(identity, header) and self._loop is not None:
            call_in_loop(self._loop, self._drain)

    def forget_silent(self) -> None:
        """Cancel the sequences of front ends not heard from for SILENT_AFTER_S (dead: a
        front end polls the status every 0.25 s), and forget them."""
        now = time.monotonic()
        for identity, frontend in list(self._frontends.items()):
            if now - frontend.seen > self.SILENT_AFTER_S:
                if frontend.models:
                    log.warning("a front end went silent; cancelling its sequences")
                self.core.forget(frontend)
                del self._frontends[identity]
                self._dirty.pop(identity, None)

    async def finish(self) -> None:
        """Wait until every control op has answered, then send what is pending."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self.flush()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(wire.socket_fd(self._sock))
        with self._lock:
            self._sock.close()
        self._ctx.term()


def _unencodable(rid: int, exc: wire.Unencodable) -> wire.Frames:
    """The error reply that stands in for request `rid`'s reply the wire could not carry."""
    error = InferenceFailed(f"the engine could not encode the reply: {exc}")
    return wire.encode_results([(rid, None, wire.error_to_wire(error))])


async def run_engine(
    settings: Settings, address: str, stop: multiprocessing.synchronize.Event
) -> None:
    """Bind, load, serve until `stop` is set (or the parent dies), then drain."""
    core = EngineCore(settings, Metrics())
    server = EngineServer(core, address)
    server.start()
    parent = os.getppid()
    await core.start()
    ticks = 0
    while not stop.is_set() and os.getppid() == parent:
        await asyncio.sleep(0.1)
        ticks += 1
        if ticks % 10 == 0:
            server.forget_silent()
    log.info("engine draining")
    core.flush()
    await core.stop()
    await server.finish()
    server.close()


def _device_name(settings: Settings) -> str:
    """cpu, or cuda:<id> when this engine's sessions will run on a GPU (for `ps`)."""
    try:
        cuda = CUDA in choose_providers(settings.device)
    except RuntimeSetupError:  # reported when the engine loads its models
        cuda = False
    return f"cuda:{settings.cuda_device_id}" if cuda else "cpu"


def engine_main(
    overrides: Overrides,
    address: str,
    stop: multiprocessing.synchronize.Event,
    title: str = "engine 0",
) -> None:
    """Process entry point (spawned by `neutreno serve`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    settings = Settings(**overrides)
    set_title(f"{title} ({_device_name(settings)})")
    configure_logging(settings)
    tracing.configure_from_env()
    asyncio.run(run_engine(settings, address, stop))
