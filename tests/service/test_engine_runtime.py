"""service/engine/runtime.py's RunThread: a model's calls run in order on one thread and come
back to the awaiting coroutine; errors reach the caller; a call cancelled before it starts does
not run; close() lets queued calls finish; a driven stepper's steps alternate with queued calls
on the same thread, a wake() rouses an idle thread for them, and so does the end of the
stepper's own wait (a batch's queue delay)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.engine.runtime import RunThread


def test_calls_run_in_order_on_one_thread_and_errors_reach_the_caller() -> None:
    worker = RunThread("test-run")
    seen: list[tuple[int, str]] = []

    def call(i: int) -> int:
        seen.append((i, threading.current_thread().name))
        if i == 3:
            raise ValueError("three")
        return i * i

    async def main() -> list[object]:
        return await asyncio.gather(
            *(worker.submit(call, i) for i in range(6)), return_exceptions=True
        )

    try:
        results = asyncio.run(main())
    finally:
        worker.close()
    assert [r for r in results if not isinstance(r, BaseException)] == [0, 1, 4, 16, 25]
    assert isinstance(results[3], ValueError) and str(results[3]) == "three"
    assert seen == [(i, "test-run") for i in range(6)]


def test_a_call_cancelled_before_it_starts_is_skipped() -> None:
    worker = RunThread("test-cancel")
    release = threading.Event()
    ran: list[str] = []

    def blocker() -> None:
        release.wait(5)
        ran.append("blocker")

    async def main() -> None:
        first = worker.submit(blocker)
        second = worker.submit(ran.append, "second")
        second.cancel()
        release.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await second

    try:
        asyncio.run(main())
    finally:
        worker.close()
    assert ran == ["blocker"]


def test_close_lets_queued_calls_finish() -> None:
    worker = RunThread("test-close")
    done: list[int] = []

    async def main() -> None:
        for i in range(3):
            worker.submit(lambda i=i: (time.sleep(0.01), done.append(i)))

    asyncio.run(main())  # the loop closes with the calls still queued: no one awaits them
    worker.close()
    assert done == [0, 1, 2]


class CountingStepper:
    """A stepper with `left` steps to run; records them (and on which thread) in `log`."""

    def __init__(self, log: list[str]) -> None:
        self.left, self.log = 0, log
        self.idle = threading.Event()

    def pending(self) -> bool:
        return self.left > 0

    def wait_s(self) -> None:
        return None

    def step(self) -> None:
        self.left -= 1
        self.log.append(f"step on {threading.current_thread().name}")
        if not self.left:
            self.idle.set()


def test_steps_alternate_with_queued_calls_on_the_thread() -> None:
    worker = RunThread("test-drive")
    log: list[str] = []
    stepper = CountingStepper(log)
    started, release = threading.Event(), threading.Event()

    def blocker() -> None:
        started.set()
        release.wait(5)
        log.append("blocker")

    async def main() -> None:
        worker.drive(stepper)
        blocked = worker.submit(blocker)
        first = worker.submit(log.append, "call a")
        second = worker.submit(log.append, "call b")
        assert started.wait(5)
        stepper.left = 3  # while the thread is busy with the blocker
        release.set()
        await asyncio.gather(blocked, first, second)
        assert stepper.idle.wait(5)

    try:
        asyncio.run(main())
    finally:
        worker.close()
    step = "step on test-drive"
    # each queued call waits behind one step at most; the last step runs with nothing queued
    assert log == ["blocker", step, "call a", step, "call b", step]


def test_wake_rouses_an_idle_thread_for_its_stepper() -> None:
    worker = RunThread("test-wake")
    log: list[str] = []
    stepper = CountingStepper(log)
    try:
        worker.drive(stepper)
        time.sleep(0.05)  # asleep on its queue: nothing pending, nothing queued
        assert log == []
        stepper.left = 2
        worker.wake()
        assert stepper.idle.wait(5)
    finally:
        worker.close()
    assert log == ["step on test-wake"] * 2


class DelayedStepper(CountingStepper):
    """One step, due `delay` seconds after it is created (as a batch whose delay runs out)."""

    def __init__(self, log: list[str], delay: float) -> None:
        super().__init__(log)
        self.left, self.due = 1, time.monotonic() + delay

    def pending(self) -> bool:
        return self.left > 0 and time.monotonic() >= self.due

    def wait_s(self) -> float | None:
        return max(0.0, self.due - time.monotonic()) if self.left else None


def test_a_stepper_due_later_runs_when_its_wait_ends_without_a_wake() -> None:
    worker = RunThread("test-due")
    log: list[str] = []
    stepper = DelayedStepper(log, 0.1)
    try:
        worker.drive(stepper)  # its one wake finds nothing pending yet
        started = time.monotonic()
        assert stepper.idle.wait(5)
        waited = time.monotonic() - started
    finally:
        worker.close()
    assert log == ["step on test-due"] and 0.05 <= waited < 2.0
