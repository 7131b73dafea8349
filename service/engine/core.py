"""`EngineCore`: the loaded models and their workers, whoever calls them.

A *worker* turns requests for one model into ONNX Runtime runs: the `DynamicBatcher` for vision
models, the `GenerationScheduler` for language models. `WORKER_FACTORIES` maps a bundle's task
to the factory that builds its worker, so a new kind of model plugs in with one entry here and
one router in `service.app.ROUTERS`. The core never sees HTTP: it takes validated feeds or
`ValidRequest`s and returns arrays or generation chunks; `status()` is the plain-data picture
(models, failures, queue depths) that front ends turn into readiness and model metadata.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from export.telemetry import is_gated, skip_similarity
from service.batching import DynamicBatcher
from service.errors import BadRequest, DeadlineExceeded, ModelNotReady, WrongTask
from service.generation.scheduler import GenerationScheduler, Submission, make_scheduler
from service.generation.validation import ValidRequest
from service.metrics import Metrics
from service.repository import Repository, load_repository
from service.runtime import ModelRuntime, choose_providers
from service.settings import Settings


Feeds = dict[str, np.ndarray]


class Worker(Protocol):
    """A model's request-to-run engine, started and stopped with the core."""

    @property
    def depth(self) -> int:
        """Requests (or sequences) waiting to run: neutreno_queue_depth."""
        ...

    def start(self) -> None: ...

    def flush(self) -> None:
        """Stop waiting for fuller batches (a drain has begun)."""
        ...

    async def stop(self) -> None:
        """Finish accepted work, then return."""
        ...


WorkerFactory = Callable[[ModelRuntime, Settings, Metrics], Worker]


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

    def feeds(self, feeds: Feeds) -> Feeds:
        """Before a run: decide whether it is sampled; if not, turn a gated graph's flag off."""
        self._decided = self._due()
        if self._decided or not self.gated:
            return feeds
        return skip_similarity(feeds)

    def __call__(self, outputs: Feeds) -> None:
        due = self._due() if self._decided is None else self._decided
        self._decided = None
        if due and "token_similarity" in outputs:
            self.metrics.observe_similarity(self.model, outputs["token_similarity"])


def make_batcher(model: ModelRuntime, settings: Settings, metrics: Metrics) -> DynamicBatcher:
    """The dynamic batcher for a vision model, configured from settings."""
    sampler = SimilaritySampler(model.name, metrics, settings.similarity_sample_every,
                                is_gated(model.session))

    async def run(feeds: Feeds) -> Feeds:
        return await model.run_async(sampler.feeds(feeds))

    return DynamicBatcher(model.name, run, metrics,
                          max_batch_size=settings.max_batch_size,
                          max_queue_delay_s=settings.max_queue_delay_s,
                          max_queue_size=settings.max_queue_size,
                          buckets=settings.buckets(model.device), on_batch=sampler)


def make_generation_worker(model: ModelRuntime, settings: Settings,
                           metrics: Metrics) -> GenerationScheduler:
    """The continuous-batching scheduler of a language model, with similarity telemetry."""
    sampler = SimilaritySampler(model.name, metrics, settings.similarity_sample_every)
    return make_scheduler(model, settings, metrics, on_prefill=sampler)


WORKER_FACTORIES: dict[str, WorkerFactory] = {
    "classification": make_batcher,
    "segmentation": make_batcher,
    "text-generation": make_generation_worker,
}


class EngineCore:
    """Loaded bundles and one worker per model (see the module docstring)."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.repository: Repository | None = None
        self.workers: dict[str, Worker] = {}
        self.started = False
        self.draining = False

    @property
    def models(self) -> dict[str, ModelRuntime]:
        return self.repository.models if self.repository else {}

    async def start(self) -> None:
        """Load every bundle (off the event loop), then start a worker per model."""
        choose_providers(self.settings.device)
        self.repository = await asyncio.to_thread(load_repository, self.settings)
        for name, model in self.models.items():
            self.metrics.set_model_info(name, model.info_labels())
            self.metrics.declare_model(name, generates=model.task == "text-generation")
            factory = WORKER_FACTORIES.get(model.task)
            if factory is not None:
                self.workers[name] = factory(model, self.settings, self.metrics)
                self.workers[name].start()
        self.started = True

    def flush(self) -> None:
        """A drain has begun: refuse new work, run what is queued without waiting."""
        self.draining = True
        for worker in self.workers.values():
            worker.flush()

    async def stop(self) -> None:
        """Workers finish what they accepted, then sessions close."""
        self.draining = True
        for worker in self.workers.values():
            await worker.stop()
        if self.repository is not None:
            await asyncio.to_thread(self.repository.close)

    def status(self) -> dict[str, Any]:
        """Plain data (msgpack-able): what is loaded, what failed and why, queue depths."""
        repo = self.repository
        return {"started": self.started, "draining": self.draining,
                "models": {n: {"path": str(m.path), "manifest": m.manifest, "device": m.device}
                           for n, m in self.models.items()},
                "failures": dict(repo.failures) if repo else {},
                "reasons": repo.reasons() if repo else [],
                "statuses": repo.statuses() if repo else {},
                "depth": {n: w.depth for n, w in self.workers.items()}}

    def _model(self, name: str) -> ModelRuntime:
        if self.draining:
            raise ModelNotReady("the service is shutting down")
        model = self.models.get(name)
        if model is None:
            raise ModelNotReady(f"model {name!r} is not loaded in the engine")
        return model

    def admit(self, name: str) -> None:
        """Refuse now (QueueFull, ModelNotReady) a request the model's batcher would refuse."""
        self._model(name)
        worker = self.workers.get(name)
        if isinstance(worker, DynamicBatcher):
            worker.admit()

    async def run(self, name: str, feeds: Feeds) -> Feeds:
        """Validated feeds through the model's batcher, or one direct run when it has none."""
        model = self._model(name)
        timeout = self.settings.request_timeout_s
        worker = self.workers.get(name)
        if isinstance(worker, DynamicBatcher):
            return await worker.submit(feeds, timeout)
        try:
            return await asyncio.wait_for(model.run_async(feeds), timeout)
        except TimeoutError:
            raise DeadlineExceeded(f"no result from {name!r} within {timeout:.3g} s") from None
        except Exception as exc:  # inputs the graph rejects (e.g. inconsistent KV-cache lengths)
            raise BadRequest(f"{name!r} rejected the inputs: {exc}") from None

    def generate(self, name: str, requests: list[ValidRequest]) -> Submission:
        """Queue one request's validated prompts on the model's generation scheduler."""
        self._model(name)
        worker = self.workers.get(name)
        if not isinstance(worker, GenerationScheduler):
            raise WrongTask(f"model {name!r} does not generate text")
        return worker.submit(requests)
