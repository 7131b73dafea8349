"""`EngineCore`: the loaded models and their workers, whoever calls them.

A *worker* turns requests for one model into ONNX Runtime runs: a `Batcher` (the
`DynamicBatcher`) for vision models, a `Generator` (the `GenerationScheduler`) for language
models. `BATCHERS` and `GENERATORS` map a bundle's task to the factory that builds its worker,
so a new kind of model plugs in with one entry here and one router in
`service.frontend.app.ROUTERS`.
The core never sees HTTP: it takes validated feeds or `GenerateRequest`s (token ids) and
answers with arrays or per-step `SeqOutput`s (token ids) through callbacks; `status()` is the
plain-data picture (models with the manifest facts front ends use, failures, queue depths) that
front ends turn into readiness and model metadata.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from export.bundle import CLASSIFICATION, SEGMENTATION, SIMILARITY, TEXT_GENERATION
from export.telemetry import is_gated, skip_similarity
from service.engine.batching import DynamicBatcher, Reply
from service.engine.repository import (
    Repository,
    check_model_name,
    folder_signatures,
    load_newest,
    load_repository,
    repository_index,
)
from service.engine.runtime import ModelRuntime, choose_providers
from service.engine.scheduler import GenerationScheduler, make_scheduler
from service.engine.sequence import Sink
from service.errors import (
    BadRequest,
    DeadlineExceeded,
    InferenceFailed,
    ModelNotFound,
    ModelNotReady,
    ServiceError,
    WrongTask,
)
from service.messages import Feeds, GenerateRequest
from service.metrics import Metrics
from service.settings import Settings
from service.wire import Unencodable, pack

log = logging.getLogger("neutreno.service")

# The manifest facts front ends use (service.messages.ModelInfo, /v1/models, tokenization);
# free-form fields (training, metrics) stay in the engine.
PUBLIC_MANIFEST = (
    "name",
    "version",
    "task",
    "labels",
    "preprocessing",
    "inputs",
    "outputs",
    "attention",
    "lam",
    "generation",
    "precision",
)


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


class Batcher(Worker, Protocol):
    """A worker that batches validated tensor requests (vision models)."""

    def admit(self) -> None:
        """Raise now what `submit` would refuse (shutting down, queue full)."""
        ...

    async def submit(self, feeds: Feeds, timeout_s: float, shared: bool = False) -> Feeds:
        """Run one request's feeds in a batch; its own rows of every output."""
        ...

    def enqueue(self, feeds: Feeds, timeout_s: float, reply: Reply, shared: bool = False) -> Any:
        """`submit` without waiting: `reply` gets the outputs or the error."""
        ...


class Generator(Worker, Protocol):
    """A worker that generates text for validated requests (language models)."""

    @property
    def running(self) -> int:
        """Sequences generating now (neutreno_running_sequences)."""
        ...

    def submit(self, rid: int, requests: list[GenerateRequest], sink: Sink) -> None:
        """Queue one request's prompts (stream `rid`); each step's outputs go to `sink`."""
        ...

    def cancel(self, sink: Sink, rid: int | None = None, index: int | None = None) -> None:
        """Stop prompt `index` of stream `rid` of `sink` (the whole stream, or every stream
        of `sink`, when None)."""
        ...


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
        if due and SIMILARITY in outputs:
            self.metrics.observe_similarity(self.model, outputs[SIMILARITY])


def make_batcher(model: ModelRuntime, settings: Settings, metrics: Metrics) -> DynamicBatcher:
    """The dynamic batcher for a vision model, configured from settings."""
    sampler = SimilaritySampler(
        model.name, metrics, settings.similarity_sample_every, is_gated(model.session)
    )

    def run(feeds: Feeds) -> Feeds:
        return model.run(sampler.feeds(feeds))

    return DynamicBatcher(
        model.name,
        run,
        model,
        metrics,
        max_batch_size=settings.max_batch_size,
        max_queue_delay_s=settings.queue_delay_s(model.device),
        max_queue_size=settings.max_queue_size,
        buckets=settings.buckets(model.device),
        on_batch=sampler,
    )


def make_generation_worker(
    model: ModelRuntime, settings: Settings, metrics: Metrics
) -> GenerationScheduler:
    """The continuous-batching scheduler of a language model, with similarity telemetry."""
    sampler = SimilaritySampler(model.name, metrics, settings.similarity_sample_every)
    return make_scheduler(model, settings, metrics, on_prefill=sampler)


BATCHERS: dict[str, Callable[[ModelRuntime, Settings, Metrics], Batcher]] = {
    CLASSIFICATION: make_batcher,
    SEGMENTATION: make_batcher,
}
GENERATORS: dict[str, Callable[[ModelRuntime, Settings, Metrics], Generator]] = {
    TEXT_GENERATION: make_generation_worker,
}


class EngineCore:
    """Loaded bundles and one worker per model (see the module docstring)."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.repository: Repository | None = None
        self.batchers: dict[str, Batcher] = {}
        self.generators: dict[str, Generator] = {}
        self.started = False
        self.draining = False
        self._poller: asyncio.Task[None] | None = None
        self._entries: dict[int, dict[str, Any] | None] = {}  # status entry per ModelRuntime
        self._raw_turns: dict[str, asyncio.Semaphore] = {}

    @property
    def models(self) -> dict[str, ModelRuntime]:
        return self.repository.models if self.repository else {}

    @property
    def workers(self) -> dict[str, Worker]:
        """Every model's worker, whichever kind."""
        return {**self.batchers, **self.generators}

    def _take_worker(self, name: str) -> Worker | None:
        """Remove model `name`'s worker from service and return it (None when it has none)."""
        batcher, generator = self.batchers.pop(name, None), self.generators.pop(name, None)
        return batcher or generator

    async def start(self) -> None:
        """Load every bundle (off the event loop), then start a worker per model; in poll mode
        also watch the repository."""
        choose_providers(self.settings.device)
        self.repository = await asyncio.to_thread(load_repository, self.settings)
        for name, model in self.models.items():
            self._serve(name, model)
        self.started = True
        if self.settings.model_control == "poll":
            self._poller = asyncio.create_task(self._poll(), name="repository-poll")

    def _serve(self, name: str, model: ModelRuntime) -> None:
        """Publish a loaded model and start its worker (no await: requests see it at once)."""
        self.metrics.set_model_info(name, model.info_labels())
        self.metrics.declare_model(name, generates=model.task in GENERATORS)
        worker: Worker
        if model.task in GENERATORS:
            worker = self.generators[name] = GENERATORS[model.task](
                model, self.settings, self.metrics
            )
        else:
            worker = self.batchers[name] = BATCHERS[model.task](model, self.settings, self.metrics)
        worker.start()

    async def _retire(self, name: str, model: ModelRuntime | None, worker: Worker | None) -> None:
        """Let a replaced or unloaded model finish what it accepted, then close it."""
        if model is not None:
            self.metrics.set_model_info(name, model.info_labels(), 0)
        if worker is not None:
            await worker.stop()
        if model is not None:
            await asyncio.to_thread(model.close)

    def index(self) -> list[dict[str, str]]:
        """Every model version in the repository with its state (the repository extension)."""
        assert self.repository is not None
        return repository_index(self.repository)

    async def control(self, op: str, name: str | None) -> Any:
        """One repository-control operation by name (what front ends send). Always answers:
        the name is checked before any path is built from it, and a disk error (or a bug)
        becomes a 400 for this operation instead of an unanswered request."""
        assert self.repository is not None
        self.repository.prune()
        if op == "index":
            return self.index()
        if name is None:
            raise BadRequest(f"{op} needs a model name")
        check_model_name(name)
        try:
            await (self.load(name) if op == "load" else self.unload(name))
        except ServiceError:
            raise
        except Exception as exc:
            log.exception("repository %s of model %s failed", op, ascii(name))
            raise BadRequest(f"{op} of model {name!r} failed: {type(exc).__name__}") from None
        return None

    async def load(self, name: str) -> None:
        """Re-read model folder `name`: its newest healthy version is loaded and warmed up, then
        takes new requests while the version it replaces finishes what it accepted; a removed
        folder is unloaded. A failed load leaves what serves in place."""
        self._controllable()
        await self._reload(name)

    async def unload(self, name: str) -> None:
        """Stop serving `name`: new requests get 404, accepted ones finish; a model that failed
        to load is no longer reported (its failure record goes)."""
        self._controllable()
        assert self.repository is not None
        if name not in self.models and name not in self.repository.failures:
            raise ModelNotFound(f"model {name!r} is not loaded")
        await self._unload(name)

    def _controllable(self) -> None:
        if self.settings.model_control != "explicit":
            raise BadRequest(
                f"NEUTRENO_MODEL_CONTROL is {self.settings.model_control!r}: "
                "loading and unloading on request needs 'explicit'"
            )

    async def _reload(self, name: str) -> None:
        assert self.repository is not None
        folder = self.repository.root / name
        if not self.repository.has_folder(name):
            if name in self.models:
                await self._unload(name)
                return
            self.repository.forget(name)
            raise ModelNotFound(f"no model folder {name!r} in the repository")
        fresh = Repository(self.repository.root)
        await asyncio.to_thread(load_newest, fresh, folder, self.settings)
        if name not in fresh.models:
            failure = fresh.failures.get(name, "the folder changed while it was read")
            if name not in self.models and self.repository.has_folder(name):
                self.repository.failures[name] = failure
            raise BadRequest(f"model {name!r} not loaded: {failure}")
        old, worker = self.repository.models.get(name), self._take_worker(name)
        self.repository.adopt(name, fresh)
        self._serve(name, fresh.models[name])
        log.info("model %s version %s loaded", name, fresh.models[name].version)
        await self._retire(name, old, worker)

    async def _unload(self, name: str) -> None:
        assert self.repository is not None
        model, worker = self.repository.forget(name), self._take_worker(name)
        log.info("model %s unloaded", name)
        await self._retire(name, model, worker)

    async def _poll(self) -> None:
        """NEUTRENO_MODEL_CONTROL=poll: reload folders whose versions changed, load new ones,
        unload removed ones, every NEUTRENO_REPOSITORY_POLL_S. A model that cannot be reloaded
        is logged and retried at its next change; should the poller itself ever stop, the
        repository reports it as a problem, so /readyz fails instead of lying."""
        repo = self.repository
        assert repo is not None
        try:
            seen = await asyncio.to_thread(folder_signatures, repo.root)
            while not self.draining:
                await asyncio.sleep(self.settings.repository_poll_s)
                now = await asyncio.to_thread(folder_signatures, repo.root)
                for name in sorted(n for n in set(seen) | set(now) if seen.get(n) != now.get(n)):
                    try:
                        await self._reload(name)
                    except ServiceError as exc:
                        log.error("repository poll: %s", exc.message)
                    except Exception:  # retried at the folder's next change
                        log.exception("repository poll: model %s not reloaded", ascii(name))
                repo.prune()
                seen = now
        except Exception as exc:
            log.exception("repository poll stopped")
            repo.problems.append(f"the repository poller stopped ({type(exc).__name__})")
            raise

    def flush(self) -> None:
        """A drain has begun: refuse new work, run what is queued without waiting."""
        self.draining = True
        for worker in self.workers.values():
            worker.flush()

    async def stop(self) -> None:
        """Workers finish what they accepted, then sessions close."""
        self.draining = True
        if self._poller is not None:
            self._poller.cancel()
        for worker in self.workers.values():
            await worker.stop()
        if self.repository is not None:
            await asyncio.to_thread(self.repository.close)

    def status(self) -> dict[str, Any]:
        """Plain data the wire always encodes: what is loaded (with the manifest facts front
        ends use, `PUBLIC_MANIFEST`), what failed and why, queue depths. A model whose facts
        the wire cannot carry is reported as failed, never sent (one bad manifest must not
        stop every status reply)."""
        repo = self.repository
        failures = dict(repo.failures) if repo else {}
        models = {}
        for name, model in self.models.items():
            entry = self._public(model)
            if entry is None:
                failures[name] = "its manifest has values the engine cannot send to front ends"
            else:
                models[name] = entry
        return {
            "started": self.started,
            "draining": self.draining,
            "models": models,
            "failures": failures,
            "reasons": repo.reasons() if repo else [],
            "statuses": repo.statuses() if repo else {},
            "depth": {n: w.depth for n, w in self.workers.items()},
            "running": {n: g.running for n, g in self.generators.items()},
        }

    def _public(self, model: ModelRuntime) -> dict[str, Any] | None:
        """A model's status entry (checked once per loaded model), None when unencodable."""
        key = id(model)
        if key not in self._entries:
            manifest = {k: model.manifest[k] for k in PUBLIC_MANIFEST if k in model.manifest}
            entry = {"path": str(model.path), "manifest": manifest, "device": model.device}
            try:
                pack(entry)
            except Unencodable as exc:
                log.error("model %s: manifest not sendable to front ends: %s", model.name, exc)
                self._entries[key] = None
            else:
                self._entries[key] = entry
        return self._entries[key]

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
        batcher = self.batchers.get(name)
        if batcher is not None:
            batcher.admit()

    async def run(self, name: str, feeds: Feeds, shared: bool = False) -> Feeds:
        """Validated feeds through the model's batcher, or one direct run when it has none;
        `shared`: the front end has others in flight for this model (not a lone client)."""
        model = self._model(name)
        timeout = self.settings.request_timeout_s
        batcher = self.batchers.get(name)
        if batcher is not None:
            return await batcher.submit(feeds, timeout, shared)
        try:
            async with asyncio.timeout(timeout):
                async with self._raw_turn(name):
                    return await model.run_async(feeds)
        except TimeoutError:
            raise DeadlineExceeded(f"no result from {name!r} within {timeout:.3g} s") from None
        except Exception as exc:  # inputs the graph rejects (e.g. inconsistent KV-cache lengths)
            raise BadRequest(f"{name!r} rejected the inputs: {exc}") from None

    def _raw_turn(self, name: str) -> asyncio.Semaphore:
        """One raw run of a model at a time: raw LM runs share the model's one worker thread
        with its generation steps, so each decode step waits behind at most one of them,
        however many clients send them."""
        turn = self._raw_turns.get(name)
        if turn is None:
            turn = self._raw_turns[name] = asyncio.Semaphore(1)
        return turn

    def enqueue(self, name: str, feeds: Feeds, shared: bool, reply: Reply) -> None:
        """`run` without waiting (the engine server): `reply` gets the outputs or the error.
        Raises at once what the batcher refuses (unknown model, queue full)."""
        self._model(name)
        batcher = self.batchers.get(name)
        if batcher is None:  # a raw LM run (rare): one task
            task = asyncio.ensure_future(self.run(name, feeds, shared))
            task.add_done_callback(lambda t: _reply_from(t, reply))
            return
        batcher.enqueue(feeds, self.settings.request_timeout_s, reply, shared)

    def generate(self, name: str, rid: int, requests: list[GenerateRequest], sink: Sink) -> None:
        """Queue one request's prompts (stream `rid`) on the model's generation scheduler;
        each step's outputs go to `sink`."""
        self._model(name)
        generator = self.generators.get(name)
        if generator is None:
            raise WrongTask(f"model {name!r} does not generate text")
        generator.submit(rid, requests, sink)

    def cancel(
        self, name: str, sink: Sink, rid: int | None = None, index: int | None = None
    ) -> None:
        """Stop prompt `index` of stream `rid` of `sink` on model `name` (the whole stream,
        or every stream of `sink`, when None)."""
        generator = self.generators.get(name)
        if generator is not None:
            generator.cancel(sink, rid, index)

    def forget(self, sink: Sink) -> None:
        """A front end is gone: cancel every sequence it had on every model."""
        for generator in self.generators.values():
            generator.cancel(sink)


def _reply_from(task: asyncio.Future[Feeds], reply: Reply) -> None:
    """Answer `reply` from a finished run task."""
    if task.cancelled():
        reply(None, InferenceFailed("the run was cancelled"))
    elif isinstance(exc := task.exception(), ServiceError):
        reply(None, exc)
    elif exc is not None:
        reply(None, InferenceFailed(f"inference failed: {exc}"))
    else:
        reply(task.result(), None)
