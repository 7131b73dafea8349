"""One ONNX Runtime session per model bundle, with the facts routes need from its manifest.

`ModelRuntime` owns the session and a single worker thread (`RunThread`): every run for a model
happens on that thread, so the event loop never blocks on ONNX Runtime and a model never runs two
batches at once (ORT already spreads one run over the intra-op threads). A model's worker (its
dynamic batcher or its generation scheduler) is *driven* by the thread (`drive`): its steps run
there, with no event loop in between (results reach the loop through a `LoopMailbox`, or
leave the process from the thread: the engine server's generation sinks); the few runs outside a
worker (raw /v2 runs of a language model) are queued to it with `run_async`.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import onnxruntime as ort

from export.bundle import ATTENTION_MASK, GREEDY_IDS, INPUT_IDS, TEXT_GENERATION
from export.fusion import session_model
from service.engine.kv_ops import KVOps
from service.messages import ModelInfo
from service.settings import Settings

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class RuntimeSetupError(RuntimeError):
    """The requested device cannot be used or a session cannot be created."""


def choose_providers(device: str) -> list[str]:
    """Execution providers for NEUTRENO_DEVICE: auto prefers CUDA when ORT offers it."""
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if device == "cuda":
        raise RuntimeSetupError(
            "NEUTRENO_DEVICE=cuda but onnxruntime has no CUDAExecutionProvider "
            f"(available: {available}); install onnxruntime-gpu or use NEUTRENO_DEVICE=auto"
        )
    return [CPU]


def providers_for(settings: Settings) -> list[str | tuple[str, dict[str, str]]]:
    """The session's providers, the CUDA one with every NEUTRENO_CUDA_* option."""
    return [
        (CUDA, settings.cuda_provider_options) if p == CUDA else p
        for p in choose_providers(settings.device)
    ]


def _session_options(settings: Settings) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = settings.intra_op_threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # No busy-waiting between ops: on a small machine the event loop needs those cycles.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class ModelRuntime(ModelInfo):
    """A loaded bundle in the engine: manifest facts, the ORT session and the thread that runs
    it."""

    def __init__(self, path: Path, manifest: dict[str, Any], settings: Settings) -> None:
        session = ort.InferenceSession(
            session_model(path / "model.onnx", settings.fused_attention),
            _session_options(settings),
            providers=providers_for(settings),
        )
        super().__init__(path, manifest, "cuda" if session.get_providers()[0] == CUDA else "cpu")
        self.session = session
        self.device_id = settings.cuda_device_id if self.device == "cuda" else 0
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_names = [n for n in outputs if n != GREEDY_IDS]  # the bundle's own
        self.greedy_ids = GREEDY_IDS in outputs  # export.greedy added it at load
        self._thread = RunThread(f"ort-{self.name}")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on the calling thread; returns every output by name."""
        values = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, values, strict=True))

    async def run_async(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`run` on this model's worker thread, awaited from the event loop."""
        return await self._on_thread(self.run, feeds)

    def run_bound(
        self,
        feeds: dict[str, np.ndarray],
        resident: dict[str, ort.OrtValue],
        to_host: list[str],
        keep: list[str],
    ) -> tuple[dict[str, np.ndarray], dict[str, ort.OrtValue]]:
        """One run with IO binding: host arrays and device-resident values in; outputs `to_host`
        come back as numpy, outputs `keep` stay on the session's device as OrtValues (the KV
        cache between decode steps). Outputs in neither list are not computed."""
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name, value in resident.items():
            binding.bind_ortvalue_input(name, value)
        for name in to_host:
            binding.bind_output(name, "cpu")
        for name in keep:
            binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()
        host = {n: v.numpy() for n, v in zip(to_host, values, strict=False)}
        return host, dict(zip(keep, values[len(to_host) :], strict=True))

    def kv_ops(self, empty: list[np.ndarray]) -> KVOps:
        """The KV-cache re-lay graph on this model's execution provider and device."""
        providers: list[Any] = [CPU]
        if self.device == "cuda":
            providers = [(CUDA, {"device_id": str(self.device_id)}), CPU]
        return KVOps(empty, providers, self.device, self.device_id)

    async def _on_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on this model's one worker thread (runs never overlap)."""
        return await self._thread.submit(fn, *args)

    def drive(self, stepper: Stepper) -> None:
        """Run `stepper`'s steps on this model's thread from now on (see `RunThread`)."""
        self._thread.drive(stepper)

    def wake(self) -> None:
        """Tell this model's thread that its stepper may have a step to run."""
        self._thread.wake()

    def warmup(self, batch_sizes: tuple[int, ...] = ()) -> None:
        """Runs on neutral inputs, one per batch size (at least batch 1), so that no request
        pays a first-run cost (allocations, cuDNN algorithm choice) for a shape served."""
        for batch in batch_sizes or (1,):
            self.run(self.example_feeds(batch))

    def example_feeds(self, batch: int = 1) -> dict[str, np.ndarray]:
        """Zero inputs of the right shapes (an empty KV cache for language models)."""
        if self.task == TEXT_GENERATION:
            return self._lm_example(batch)
        return {
            s.name: np.zeros(self._concrete(s.shape, batch), s.numpy_dtype) for s in self.inputs
        }

    def _concrete(self, shape: tuple[int | str, ...], batch: int) -> tuple[int, ...]:
        return tuple(batch if isinstance(d, str) else int(d) for d in shape)

    def _lm_example(self, batch: int) -> dict[str, np.ndarray]:
        gen = self.manifest["generation"]
        seq = 2
        feeds: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            if spec.name == INPUT_IDS:
                feeds[spec.name] = np.zeros((batch, seq), np.int64)
            elif spec.name == ATTENTION_MASK:
                feeds[spec.name] = np.ones((batch, seq), np.int64)
            else:
                feeds[spec.name] = np.zeros(
                    (batch, gen["num_heads"], 0, gen["head_dim"]), spec.numpy_dtype
                )
        return feeds

    def close(self) -> None:
        """Let queued runs finish, then stop the worker thread."""
        self._thread.close()


Call = tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]
WAKE = "wake"  # queued by `RunThread.wake`: look at the stepper again


class Stepper(Protocol):
    """Work a `RunThread` runs in steps between its queued calls: a model's worker (its
    dynamic batcher or its generation scheduler)."""

    def pending(self) -> bool:
        """Whether there is a step to run now (read on the thread)."""
        ...

    def wait_s(self) -> float | None:
        """With nothing pending: how long until a step may be, with no `wake` (a batch's
        queue delay running out); None: not before a wake."""
        ...

    def step(self) -> None:
        """One step; it handles its own errors (it must not raise)."""
        ...


class RunThread:
    """One thread that runs a model's calls in order, each handed back to the event loop that
    asked: a queue put to start a call, one `call_soon_threadsafe` to end it. (A
    ThreadPoolExecutor adds a work item, a concurrent future and a chained asyncio future to
    every call, a visible share of a one-sequence decode step's host time.) A call cancelled
    before it starts is skipped, as an executor would.

    A thread may also drive a `Stepper`: while it has a step pending, the thread alternates one
    step and at most one queued call (a queued call waits behind one step at most), so a batch
    or a generation loop runs with no event-loop round trip per step (vLLM's engine-core busy
    loop); with nothing pending, the thread sleeps on its queue until a call or a `wake`
    arrives, or the stepper's `wait_s` runs out."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[Call | str | None] = queue.SimpleQueue()
        self._stepper: Stepper | None = None
        self._woken = False  # a WAKE is queued and not yet taken
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def drive(self, stepper: Stepper) -> None:
        """Run `stepper`'s steps on this thread from now on."""
        self._stepper = stepper
        self.wake()

    def wake(self) -> None:
        """Have the thread ask its stepper again (it may be asleep on the queue). One WAKE
        queued is enough: the thread clears the flag before it asks, so whatever the caller
        queued for the stepper before calling this is seen."""
        if not self._woken:
            self._woken = True
            self._calls.put(WAKE)

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._calls.put((loop, future, fn, args))
        return future

    def close(self) -> None:
        """Let queued calls finish, then end the thread."""
        self._calls.put(None)
        self._thread.join()

    def _next(self) -> Call | str | None:
        """The next queued call, after one step when the stepper has one pending (then
        WAKE when nothing is queued)."""
        stepper = self._stepper
        if stepper is None:
            return self._calls.get()
        if not stepper.pending():
            try:
                return self._calls.get(timeout=stepper.wait_s())
            except queue.Empty:
                return WAKE
        stepper.step()
        try:
            return self._calls.get_nowait()
        except queue.Empty:
            return WAKE

    def _serve(self) -> None:
        while (call := self._next()) is not None:
            if isinstance(call, str):
                self._woken = False
                continue
            loop, future, fn, args = call
            if future.cancelled():
                continue
            try:
                outcome: tuple[Any, BaseException | None] = (fn(*args), None)
            except BaseException as exc:  # delivered to the caller, as an executor does
                outcome = (None, exc)
            call_in_loop(loop, settle, future, *outcome)


def call_in_loop(
    loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any
) -> None:
    """`callback(*args)` on `loop`, from another thread; nothing when the loop has closed
    (nobody is waiting any more)."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass


def settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """On the future's loop: its result, or its error (nothing once it is done)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


T = TypeVar("T")


class LoopMailbox(Generic[T]):
    """What a model's thread hands back to the event loop that started its worker: `post`
    (on the thread) queues items, and `deliver` gets, on the loop, every item posted since its
    last call: one `call_soon_threadsafe` per wake-up of the loop, not per post, so the steps
    or batches that end while the loop is busy go out together. `end` (on the thread, once
    the worker has finished everything it accepted) resolves `stopped`, after every item
    posted before it has been delivered."""

    def __init__(self, deliver: Callable[[list[T]], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._deliver = deliver
        self._lock = threading.Lock()
        self._items: list[T] = []
        self.stopped: asyncio.Future[None] = self._loop.create_future()

    def post(self, items: list[T]) -> None:
        if not items:
            return
        with self._lock:
            asleep = not self._items
            self._items.extend(items)
        if asleep:
            call_in_loop(self._loop, self._drain)

    def end(self) -> None:
        call_in_loop(self._loop, settle, self.stopped, None, None)

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        self._deliver(items)
