"""What one running service holds, reachable from routes as `request.app.state.service`.

`ServiceState` ties settings, metrics, the loaded models and one *worker* per model together.
A worker is whatever turns requests for a model into runs: the `DynamicBatcher` for vision
models, a generation scheduler for language models. `WORKER_FACTORIES` maps a bundle's task to
the factory that builds its worker, so a new kind of model plugs in with one entry here and one
router in `service.app.ROUTERS`, without touching the lifespan or the health logic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from fastapi import Request

from export.telemetry import is_gated, skip_similarity
from service.batching import DynamicBatcher
from service.errors import (BadRequest, DeadlineExceeded, ModelNotFound, ModelNotReady,
                            WrongTask)
from service.generation.scheduler import make_scheduler
from service.metrics import Metrics
from service.repository import Repository
from service.runtime import ModelRuntime
from service.settings import Settings


class Worker(Protocol):
    """A model's request-to-run engine, started and stopped by the app's lifespan."""

    def start(self) -> None: ...

    async def stop(self) -> None:
        """Finish accepted work, then return."""
        ...


WorkerFactory = Callable[[ModelRuntime, "ServiceState"], Worker]


class SimilaritySampler:
    """Batch hook feeding neutreno_token_similarity from one batch in `every`. Called with
    `feeds` before each run, it decides then, and a gated graph (`export.telemetry`) skips the
    similarity subgraph on the batches not sampled; without `feeds` it decides after the run."""

    def __init__(self, model: str, metrics: Metrics, every: int, gated: bool = False) -> None:
        self.model, self.metrics, self.every, self.gated = model, metrics, every, gated
        self._count = 0
        self._decided: bool | None = None

    def _due(self) -> bool:
        self._count += 1
        return bool(self.every) and self._count % self.every == 0

    def feeds(self, feeds: dict) -> dict:
        """Before a run: decide whether it is sampled; if not, turn a gated graph's flag off."""
        self._decided = self._due()
        return feeds if self._decided or not self.gated else skip_similarity(feeds)

    def __call__(self, outputs: dict) -> None:
        due = self._due() if self._decided is None else self._decided
        self._decided = None
        if due and "token_similarity" in outputs:
            self.metrics.observe_similarity(self.model, outputs["token_similarity"])


def make_batcher(model: ModelRuntime, state: ServiceState) -> DynamicBatcher:
    """The dynamic batcher for a vision model, configured from settings."""
    s = state.settings
    sampler = SimilaritySampler(model.name, state.metrics, s.similarity_sample_every,
                                is_gated(model.session))

    async def run(feeds: dict) -> dict:
        return await model.run_async(sampler.feeds(feeds))
    return DynamicBatcher(model.name, run, state.metrics,
                          max_batch_size=s.max_batch_size, max_queue_delay_s=s.max_queue_delay_s,
                          max_queue_size=s.max_queue_size, on_batch=sampler)


WORKER_FACTORIES: dict[str, WorkerFactory] = {
    "classification": make_batcher,
    "segmentation": make_batcher,
    "text-generation": make_scheduler,
}


@dataclass
class ServiceState:
    """Settings, metrics, models and workers of one app instance."""

    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    repository: Repository | None = None
    workers: dict[str, Worker] = field(default_factory=dict)
    started: bool = False
    draining: bool = False
    loop: asyncio.AbstractEventLoop | None = None

    @property
    def models(self) -> dict[str, ModelRuntime]:
        return self.repository.models if self.repository else {}

    @property
    def failures(self) -> dict[str, str]:
        return self.repository.failures if self.repository else {}

    def request_drain(self) -> None:
        """Signal-safe start of a drain: readiness goes 503, new requests are refused, and
        every batcher runs what it has queued at once instead of waiting for fuller batches."""
        self.draining = True
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._flush_workers)

    def _flush_workers(self) -> None:
        for worker in self.workers.values():
            flush = getattr(worker, "flush", None)
            if flush is not None:
                flush()

    def readiness(self) -> list[str]:
        """Why the service is not ready; empty when it is."""
        reasons = [] if self.started else ["models are still loading"]
        if self.draining:
            reasons.append("shutting down")
        return reasons + [f"model {n} failed to load: {r}" for n, r in self.failures.items()]

    def model(self, name: str, task: str | None = None) -> ModelRuntime:
        """A loaded model by name (404 unknown, 503 broken or draining, 400 wrong task)."""
        if name in self.failures:
            raise ModelNotReady(f"model {name!r} is not available: {self.failures[name]}")
        if name not in self.models:
            raise ModelNotFound(f"no model named {name!r}; available: {sorted(self.models)}")
        if self.draining:
            raise ModelNotReady("the service is shutting down")
        found = self.models[name]
        if task is not None and found.task != task:
            raise WrongTask(f"model {name!r} does a {found.task} task, not {task}")
        return found

    def batcher(self, name: str) -> DynamicBatcher | None:
        worker = self.workers.get(name)
        return worker if isinstance(worker, DynamicBatcher) else None

    def admit(self, model: ModelRuntime) -> None:
        """Refuse now (QueueFull, ModelNotReady) a request the model's batcher would refuse."""
        batcher = self.batcher(model.name)
        if batcher is not None:
            batcher.admit()

    async def run(self, model: ModelRuntime, feeds: dict[str, np.ndarray]
                  ) -> dict[str, np.ndarray]:
        """Run validated feeds through the model's batcher, or directly when it has none."""
        timeout = self.settings.request_timeout_s
        batcher = self.batcher(model.name)
        if batcher is not None:
            return await batcher.submit(feeds, timeout)
        try:
            return await asyncio.wait_for(model.run_async(feeds), timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                f"no result from {model.name!r} within {timeout:.3g} s") from None
        except Exception as exc:  # inputs the graph rejects (e.g. inconsistent KV-cache lengths)
            raise BadRequest(f"{model.name!r} rejected the inputs: {exc}") from None


async def get_state(request: Request) -> ServiceState:
    """FastAPI dependency: this app's ServiceState."""
    return request.app.state.service
