"""Every Prometheus metric the service exports, defined once (names fixed in docs/ARCHITECTURE.md).

Each app gets its own `CollectorRegistry` so several apps (tests, benchmarks) can live in one
process. Routes reach the metrics through `app.state.service.metrics`, the engine's batchers and
schedulers through their `EngineCore`; nothing else calls prometheus_client constructors.

Several processes (`neutreno serve`: front ends and the engine) share one view through
prometheus_client's multiprocess mode: the supervisor sets `PROMETHEUS_MULTIPROC_DIR` before it
starts them, every process writes its samples there, and `render` in any front end merges them.
Counters and histograms add up across processes; each gauge says how (`multiprocess_mode`): the
engine's gauges count only live processes, so a restarted engine starts from its own values.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True)
class GenerationSeries:
    """The labelled series of one LM that its scheduler updates every step."""

    ttft: Histogram
    itl: Histogram
    tokens: Counter
    running: Gauge
    waiting: Gauge
    queue_depth: Gauge
    inference: Histogram
    batch_size: Histogram
    queue_wait: Histogram


LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """The metric families, as attributes, registered on one registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests_total = Counter(
            "neutreno_requests_total",
            "Requests by model, endpoint and HTTP status",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.request_duration_seconds = Histogram(
            "neutreno_request_duration_seconds",
            "Request latency from receipt to response",
            ["model", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_duration_seconds = Histogram(
            "neutreno_queue_duration_seconds",
            "Time a request waited in the batch queue",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration_seconds = Histogram(
            "neutreno_inference_duration_seconds",
            "ONNX Runtime time per batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "neutreno_batch_size",
            "Rows per executed batch",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "neutreno_queue_depth",
            "Requests waiting in the batch queue",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.time_to_first_token_seconds = Histogram(
            "neutreno_time_to_first_token_seconds",
            "Time from request to first generated token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token_latency_seconds = Histogram(
            "neutreno_inter_token_latency_seconds",
            "Time between consecutive generated tokens",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.generated_tokens_total = Counter(
            "neutreno_generated_tokens_total", "Tokens generated", ["model"], registry=r
        )
        self.running_sequences = Gauge(
            "neutreno_running_sequences",
            "Sequences in the running decode batch",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.waiting_sequences = Gauge(
            "neutreno_waiting_sequences",
            "Generation requests waiting for admission",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.token_similarity = Gauge(
            "neutreno_token_similarity",
            "Mean pairwise cosine similarity of token vectors per layer on sampled live traffic "
            "(over-smoothing telemetry: near 1 means collapsed representations)",
            ["model", "layer"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.model_info = Gauge(
            "neutreno_model_info",
            "Loaded model bundles (value 1) with their metadata",
            ["model", "version", "task", "attention", "lam", "device"],
            registry=r,
            multiprocess_mode="livemax",
        )

    def observe_similarity(self, model: str, similarity: np.ndarray) -> None:
        """Set the per-layer gauge from a (rows, layers) array: the mean over rows."""
        if similarity.ndim != 2 or similarity.shape[0] == 0:
            return
        for layer, value in enumerate(similarity.mean(axis=0).tolist()):
            self.token_similarity.labels(model=model, layer=str(layer)).set(value)

    def declare_model(self, model: str, generates: bool) -> None:
        """Create a model's series at zero, so every family it will feed is listed from the
        start (in multiprocess mode a family with no series is not listed at all)."""
        families = [
            self.queue_duration_seconds,
            self.inference_duration_seconds,
            self.batch_size,
            self.queue_depth,
        ]
        if generates:
            families += [
                self.time_to_first_token_seconds,
                self.inter_token_latency_seconds,
                self.generated_tokens_total,
                self.running_sequences,
                self.waiting_sequences,
            ]
        for family in families:
            family.labels(model)

    def generation_series(self, model: str) -> GenerationSeries:
        """One LM's generation series, looked up once (the scheduler updates them every step)."""
        return GenerationSeries(
            ttft=self.time_to_first_token_seconds.labels(model),
            itl=self.inter_token_latency_seconds.labels(model),
            tokens=self.generated_tokens_total.labels(model),
            running=self.running_sequences.labels(model),
            waiting=self.waiting_sequences.labels(model),
            queue_depth=self.queue_depth.labels(model),
            inference=self.inference_duration_seconds.labels(model),
            batch_size=self.batch_size.labels(model),
            queue_wait=self.queue_duration_seconds.labels(model),
        )

    def set_model_info(self, model: str, labels: Sequence[str], value: int = 1) -> None:
        """Publish one bundle's metadata (1 loaded, 0 unloaded or replaced); labels follow
        `model_info`'s label order after model."""
        self.model_info.labels(model, *labels).set(value)

    def render(self) -> bytes:
        """The Prometheus text exposition: every process's samples in multiprocess mode, else
        this registry's."""
        if os.environ.get(MULTIPROC_ENV):
            merged = CollectorRegistry()
            MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)
