"""Dynamic batching per model (the Triton / TorchServe scheme), formed and run on the model's
thread.

Per-batch, not per-request, work: a request is a queue entry with a `Reply` callback (no task,
no future of its own in the engine process). The event loop only queues requests (`enqueue`)
and wakes the model's thread; the thread (`RunThread.drive`, service.engine.runtime) forms each
batch, runs it and cuts each request's rows out of every output, then posts the replies back
to the loop in one `call_soon_threadsafe` (batches that end while the loop is busy come back
together), where the callbacks run and the engine server groups them into one message per
front end. `submit` wraps `enqueue` in a future for in-process callers.

Requests are queued with their preprocessed feeds (batch axis 0, `rows` >= 1). A batch forms
when the queued rows reach `max_batch_size` or the oldest request has waited `max_queue_delay`;
a lone client (no two requests outstanding at once in the last second) does not wait at all,
since no batch-mate can come, so batching costs it no latency. A batch that fails is re-run one
request at a time, so a poison input fails alone (400) instead of failing its batch-mates; if
every request fails alone the model is at fault and each gets `InferenceFailed` (503).
The queue is bounded: when full, `submit` (and `admit`, which routes call before decoding) raises
`QueueFull` (429 with Retry-After) at once. A request whose deadline passes gets
`DeadlineExceeded` (504) and is dropped from the queue if it has not started. With
`max_batch_size` 1 each request runs alone, i.e. batching is off. With `buckets`, a batch is
padded with zero rows up to the smallest bucket that holds it (the engine warms every bucket up
at load), so a GPU never meets a new shape while serving; outputs are cut back to the real rows
before anyone sees them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias

import numpy as np

from service import tracing
from service.engine.runtime import LoopMailbox, Stepper
from service.errors import (
    BadRequest,
    DeadlineExceeded,
    InferenceFailed,
    ModelNotReady,
    QueueFull,
    ServiceError,
)
from service.messages import Feeds
from service.metrics import Metrics

log = logging.getLogger("neutreno.service")

RunFn = Callable[[Feeds], Feeds]  # one batch through the model, on its thread
Reply = Callable[[Feeds | None, ServiceError | None], None]  # (outputs, error): one is None


class Driver(Protocol):
    """The thread that runs a worker's steps (a `ModelRuntime`, or a bare `RunThread`)."""

    def drive(self, stepper: Stepper) -> None: ...

    def wake(self) -> None: ...


@dataclass(eq=False)
class _Request:
    feeds: Feeds
    rows: int
    enqueued: float
    deadline: float
    reply: Reply = field(repr=False)
    trace: object = field(default_factory=tracing.capture, repr=False)  # None when off
    done: bool = False  # answered (set on the event loop)


Answer: TypeAlias = tuple[_Request, Feeds | None, ServiceError | None]


class DynamicBatcher:
    """Queue + batch forming for one model; routes call `admit` (via ServiceState) before
    decoding a request and `submit` (or the engine server `enqueue`) to run it."""

    LONE_WINDOW_S = 1.0  # a client is lone when no two requests overlapped for this long

    def __init__(
        self,
        model: str,
        run: RunFn,
        driver: Driver,
        metrics: Metrics,
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int,
        buckets: tuple[int, ...] = (),
        on_batch: Callable[[Feeds], None] | None = None,
    ) -> None:
        self.model = model
        self._run = run
        self._driver = driver
        self._metrics = metrics
        self._queue_depth = metrics.queue_depth.labels(model)
        self._queue_wait = metrics.queue_duration_seconds.labels(model)
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue_size = max_queue_size
        self.buckets = buckets
        self._on_batch = on_batch
        self._lock = threading.Lock()  # the queue: appended on the loop, taken on the thread
        self._queue: deque[_Request] = deque()
        self._queued_rows = 0
        self._batch_seconds = 0.05  # running estimate for Retry-After
        self._outstanding = 0  # submitted, not yet answered (the loop's)
        self._shared_at = -math.inf  # last time two or more requests were outstanding
        self._closing = False
        self._flushing = False
        self._ended = False
        self._mailbox: LoopMailbox[Answer] | None = None
        self._answers: list[Answer] = []  # this batch's, on the thread

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        """Have the model's thread form and run this model's batches; replies come back to
        this loop."""
        self._mailbox = LoopMailbox(self._deliver)
        self._driver.drive(self)

    def flush(self) -> None:
        """Stop waiting for fuller batches: run what is queued now (called on SIGTERM)."""
        self._flushing = True
        self._driver.wake()

    async def stop(self) -> None:
        """Finish everything already queued, then return."""
        self._closing = True
        self._driver.wake()
        if self._mailbox is not None:
            await self._mailbox.stopped

    def admit(self) -> None:
        """Raise what `submit` would refuse with right now (shutting down, queue full), so a
        route can refuse before it spends CPU decoding the request."""
        if self._closing:
            raise ModelNotReady(f"model {self.model!r} is shutting down")
        if len(self._queue) >= self.max_queue_size:
            raise QueueFull(
                f"model {self.model!r} has {len(self._queue)} queued requests "
                f"(limit {self.max_queue_size}); retry later",
                self._retry_after(),
            )

    def enqueue(
        self, feeds: Feeds, timeout_s: float, reply: Reply, shared: bool = False
    ) -> _Request:
        """Queue one request; `reply` gets its outputs (each with the request's own rows) or
        its error, once, on this event loop. `shared`: the caller knows of other requests in
        flight with it (a front end decoding them), so it is not a lone client's even when
        alone in the queue."""
        self.admit()
        rows = int(next(iter(feeds.values())).shape[0])
        now = time.perf_counter()
        req = _Request(feeds, rows, now, now + timeout_s, reply)
        self._outstanding += 1
        if self._outstanding > 1 or shared:
            self._shared_at = now
        with self._lock:
            self._queue.append(req)
            self._queued_rows += rows
            self._queue_depth.set(len(self._queue))  # scraped while requests wait
        self._driver.wake()
        return req

    async def submit(self, feeds: Feeds, timeout_s: float, shared: bool = False) -> Feeds:
        """`enqueue`, awaited (in-process callers)."""
        future: asyncio.Future[Feeds] = asyncio.get_running_loop().create_future()

        def reply(outputs: Feeds | None, error: ServiceError | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                assert outputs is not None
                future.set_result(outputs)

        req = self.enqueue(feeds, timeout_s, reply, shared)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            error = DeadlineExceeded(f"no result from {self.model!r} within {timeout_s:.3g} s")
            self._answer(req, None, error)
            return await future

    def _retry_after(self) -> int:
        batches_ahead = math.ceil(self._queued_rows / self.max_batch_size)
        return math.ceil(batches_ahead * self._batch_seconds)

    def _deliver(self, answers: list[Answer]) -> None:
        """On the event loop: the replies of every batch posted since the last call."""
        for req, outputs, error in answers:
            self._answer(req, outputs, error)

    def _answer(self, req: _Request, outputs: Feeds | None, error: ServiceError | None) -> None:
        """Give one request its outputs or error (once), on the event loop."""
        if req.done:
            return
        req.done = True
        self._outstanding -= 1
        req.reply(outputs, error)

    # The model's thread from here on.

    def _delay_left(self) -> float:
        """Seconds until the queued requests should run as a batch (0: now). Call with the
        queue non-empty."""
        if self._queued_rows >= self.max_batch_size or self._closing or self._flushing:
            return 0.0
        oldest = self._queue[0].enqueued
        if oldest - self._shared_at > self.LONE_WINDOW_S:
            return 0.0
        return oldest + self.max_queue_delay_s - time.perf_counter()

    def pending(self) -> bool:
        """A batch is due (full, a lone client's, its delay run out, a drain), or a stop is
        to be confirmed."""
        if not self._queue:
            return self._closing and not self._ended
        return self._delay_left() <= 0

    def wait_s(self) -> float | None:
        """Until the oldest queued request's delay runs out (None with an empty queue)."""
        return max(0.0, self._delay_left()) if self._queue else None

    def step(self) -> None:
        """Form one batch and run it, or confirm the stop when nothing is left."""
        assert self._mailbox is not None
        batch = self._take_batch()
        if batch:
            try:
                self._execute(batch)
            except Exception as exc:  # a bug must fail the batch, not kill the worker
                log.exception("batch of %d on %s failed", len(batch), self.model)
                error = InferenceFailed(f"inference failed on {self.model!r}: {exc}")
                self._answers += [(req, None, error) for req in batch]
        answers, self._answers = self._answers, []
        self._mailbox.post(answers)
        if self._closing and not self._queue and not self._ended:
            self._ended = True
            self._mailbox.end()

    def _take_batch(self) -> list[_Request]:
        """Pop requests up to max_batch_size rows (a larger single request runs alone); those
        whose deadline passed while queued get DeadlineExceeded (504)."""
        batch: list[_Request] = []
        rows = 0
        now = time.perf_counter()
        with self._lock:
            while self._queue:
                req = self._queue[0]
                if batch and rows + req.rows > self.max_batch_size:
                    break
                self._queue.popleft()
                self._queued_rows -= req.rows
                if req.done:  # its caller stopped waiting
                    continue
                if req.deadline < now:
                    waited = now - req.enqueued
                    error = DeadlineExceeded(f"no result from {self.model!r} within {waited:.3g} s")
                    self._answers.append((req, None, error))
                    continue
                batch.append(req)
                rows += req.rows
            self._queue_depth.set(len(self._queue))
        return batch

    def _execute(self, batch: list[_Request]) -> None:
        started = time.perf_counter()
        for req in batch:
            self._queue_wait.observe(started - req.enqueued)
        rows = sum(r.rows for r in batch)
        self._metrics.batch_size.labels(self.model).observe(rows)
        try:
            outputs = self._run(self._stacked(batch, rows))
            outputs = {name: value[:rows] for name, value in outputs.items()}
        except Exception as exc:  # reaches the waiters; the worker itself carries on
            log.error("batch of %d on %s failed: %s", len(batch), self.model, exc)
            if len(batch) > 1:
                self._isolate(batch)
            else:
                error = InferenceFailed(f"inference failed on {self.model!r}: {exc}")
                self._answers.append((batch[0], None, error))
            return
        elapsed = time.perf_counter() - started
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * elapsed
        self._metrics.inference_duration_seconds.labels(self.model).observe(elapsed)
        tracing.record_batch(self.model, batch, started)
        self._scatter(batch, outputs)
        if self._on_batch is not None:
            try:
                self._on_batch(outputs)
            except Exception:  # telemetry must never break serving
                log.exception("batch hook failed on %s", self.model)

    def _stacked(self, batch: list[_Request], rows: int) -> Feeds:
        """The batch's feeds along axis 0, zero-padded up to the smallest bucket holding
        `rows` (unpadded when there are no buckets or none is large enough)."""
        size = next((b for b in self.buckets if b >= rows), rows)
        feeds: Feeds = {}
        for name, first in batch[0].feeds.items():
            parts = [r.feeds[name] for r in batch]
            if size > rows:
                parts.append(np.zeros((size - rows, *first.shape[1:]), first.dtype))
            feeds[name] = np.concatenate(parts) if len(parts) > 1 else first
        return feeds

    def _isolate(self, batch: list[_Request]) -> None:
        """Re-run a failed batch one request at a time, so that an input the model cannot
        process (a poison input) costs only its own result, not its batch-mates'. A request
        that fails alone while others succeed is the input's fault (400); when every one
        fails, the model is (503, retryable)."""
        failures: list[tuple[_Request, Exception]] = []
        succeeded = 0
        for req in batch:
            try:
                outputs = self._run(req.feeds)
            except Exception as exc:
                failures.append((req, exc))
                continue
            succeeded += 1
            self._scatter([req], outputs)
        for req, error in failures:
            if succeeded:
                fault: ServiceError = BadRequest(
                    f"{self.model!r} cannot process this input: {error}"
                )
            else:
                fault = InferenceFailed(f"inference failed on {self.model!r}: {error}")
            self._answers.append((req, None, fault))

    def _scatter(self, batch: list[_Request], outputs: Feeds) -> None:
        start = 0
        for req in batch:
            part = {name: value[start : start + req.rows] for name, value in outputs.items()}
            start += req.rows
            self._answers.append((req, part, None))
