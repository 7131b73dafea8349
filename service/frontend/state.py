"""What one front end holds, reachable from routes as `request.app.state.service`.

`ServiceState` ties settings, metrics and the engine client together and turns the engine's
status into what routes need: the loaded models' manifest facts (`ModelInfo`), readiness
reasons, and for language models the tokenizer and limits used to validate prompts before
anything is queued. It never touches ONNX Runtime: inference goes through `engine`, which is
the engine process (`MPClient`) or an `EngineCore` in this process (`InprocClient`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Request

from service.errors import ModelNotFound, ModelNotReady, WrongTask
from service.frontend.client import EngineClient
from service.frontend.generation.output import GenerationStream
from service.frontend.generation.tokenizer import TextTokenizer
from service.frontend.generation.validation import ModelLimits, ValidRequest
from service.messages import ModelInfo
from service.metrics import Metrics
from service.settings import Settings


@dataclass(frozen=True)
class GenerationFront:
    """A language model's front-end side: tokenizer and the limits prompts must fit."""

    tokenizer: TextTokenizer
    limits: ModelLimits


@dataclass
class ServiceState:
    """Settings, metrics, the engine client and the models it serves, for one front end."""

    settings: Settings
    engine: EngineClient
    metrics: Metrics = field(default_factory=Metrics)
    draining: bool = False
    _models: dict[str, ModelInfo] = field(default_factory=dict)
    _fronts: dict[str, GenerationFront] = field(default_factory=dict)
    image_slots: asyncio.Semaphore = field(init=False)  # NEUTRENO_MAX_CONCURRENT_IMAGES
    _inflight: dict[str, int] = field(default_factory=dict)  # admitted, not yet answered

    def __post_init__(self) -> None:
        self.image_slots = asyncio.Semaphore(self.settings.max_concurrent_images)

    def _status(self) -> dict[str, Any] | None:
        return self.engine.status()

    @property
    def started(self) -> bool:
        status = self._status()
        return bool(status and status["started"])

    @property
    def models(self) -> dict[str, ModelInfo]:
        """Loaded models by name, rebuilt only when the engine's set of bundles changes."""
        status = self._status()
        loaded = status["models"] if status else {}
        if {n: str(m.path) for n, m in self._models.items()} != {
            n: m["path"] for n, m in loaded.items()
        }:
            self._models = {
                n: ModelInfo(Path(m["path"]), m["manifest"], m["device"]) for n, m in loaded.items()
            }
            self._fronts = {}
        return self._models

    @property
    def failures(self) -> dict[str, str]:
        status = self._status()
        return dict(status["failures"]) if status else {}

    def request_drain(self) -> None:
        """Signal-safe start of a drain: readiness goes 503, new requests are refused."""
        self.draining = True
        self.engine.flush()

    def readiness(self) -> list[str]:
        """Why the service is not ready; empty when it is."""
        status = self._status()
        if status is None:
            reasons = ["the engine is not answering"]
        else:
            reasons = [] if status["started"] else ["models are still loading"]
        if self.draining or (status and status["draining"]):
            reasons.append("shutting down")
        return reasons + (status["reasons"] if status else [])

    def statuses(self) -> dict[str, str]:
        """Per model: "ready" (naming a skipped broken newer version) or why it is not."""
        status = self._status()
        return dict(status["statuses"]) if status else {}

    def count_request(self, name: str, endpoint: str, status: int, seconds: float) -> None:
        """neutreno_requests_total and neutreno_request_duration_seconds for one request, HTTP
        or gRPC. The `model` label is `name` when it names a loaded (or failed) model, else
        empty: clients cannot grow the label set."""
        model = name if name in self.models or name in self.failures else ""
        self.metrics.requests_total.labels(model, endpoint, str(status)).inc()
        self.metrics.request_duration_seconds.labels(model, endpoint).observe(seconds)

    def model(self, name: str, task: str | None = None, version: str | None = None) -> ModelInfo:
        """A loaded model by name (404 unknown or not that version, 503 broken or draining,
        400 wrong task)."""
        failures = self.failures
        if name in failures:
            raise ModelNotReady(f"model {name!r} is not available: {failures[name]}")
        models = self.models
        if name not in models:
            if self._status() is None:
                raise ModelNotReady("the engine is not answering")
            raise ModelNotFound(f"no model named {name!r}; available: {sorted(models)}")
        if self.draining:
            raise ModelNotReady("the service is shutting down")
        found = models[name]
        if version is not None and version != found.version:
            raise ModelNotFound(
                f"version {version} of {name!r} is not loaded; version {found.version} serves"
            )
        if task is not None and found.task != task:
            raise WrongTask(f"model {name!r} does a {found.task} task, not {task}")
        return found

    @contextmanager
    def admitted(self, model: ModelInfo) -> Iterator[None]:
        """Refuse now (QueueFull, ModelNotReady) a request the engine would refuse, else count
        it as in flight here until it is answered (`run` tells the engine about the others)."""
        self.engine.admit(model.name)
        self._inflight[model.name] = self._inflight.get(model.name, 0) + 1
        try:
            yield
        finally:
            self._inflight[model.name] -= 1

    async def run(self, model: ModelInfo, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run validated feeds on the engine (batched with every front end's requests). When
        other requests for the model are in flight here (decoding, say), the engine is told,
        so it does not mistake this one for a lone client's and run it without batch-mates."""
        shared = self._inflight.get(model.name, 0) > 1
        return await self.engine.run(model.name, feeds, shared)

    def generation_front(self, model: ModelInfo) -> GenerationFront:
        """Tokenizer and limits of a language model, loaded once per bundle."""
        front = self._fronts.get(model.name)
        if front is None:
            gen = model.manifest["generation"]
            tokenizer = TextTokenizer.of_bundle(model.path, gen)
            limits = ModelLimits(gen["context_length"], self.settings.max_cached_tokens)
            front = self._fronts[model.name] = GenerationFront(tokenizer, limits)
        return front

    async def generate(self, model: ModelInfo, requests: list[ValidRequest]) -> GenerationStream:
        """Queue validated prompts on the engine's scheduler for this model."""
        return await self.engine.generate(
            model.name, requests, self.generation_front(model).tokenizer
        )


async def get_state(request: Request) -> ServiceState:
    """FastAPI dependency: this app's ServiceState."""
    return request.app.state.service
