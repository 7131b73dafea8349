"""Reliability test helpers: a watch on a live server's health and memory, wrk, graphs.

The server is a real `neutreno serve` process (bench.live_server.LiveServer, started with
support.service_helpers.start_server), as in production; its 5xx count is read from its own
`neutreno_requests_total`, which counts every response the app sent, whoever the client was.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bench.common import WrkResult, write_wrk_files
from bench.common import run_wrk as bench_run_wrk
from bench.live_server import LiveServer
from export.bundle import write_bundle
from support.service_helpers import (
    FASHION,
    _attention_block,
    _attention_inits,
    _manifest,
    classifier_model,
    classifier_parts,
)
from support.tools import require_tool


class Watch:
    """While its block runs, a thread asks /healthz every `every` s and samples the RSS of the
    server's processes together (supervisor, engine, front ends): `worst_s` is the slowest
    /healthz answer, `rss_growth_mb` the highest RSS sample above the one taken on entry."""

    def __init__(
        self,
        server: LiveServer,
        every: float = 0.02,
        max_worst_s: float = 1.0,
        max_rss_growth_mb: float = 100.0,
    ) -> None:
        self.server, self.every = server, every
        self.max_worst_s, self.max_rss_growth_mb = max_worst_s, max_rss_growth_mb
        self.worst_s, self.rss_growth_mb, self.statuses = 0.0, 0.0, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> Watch:
        self._rss_start = self.server.memory_mib()["VmRSS"]
        self._client = httpx.Client(base_url=self.server.url, timeout=30)
        self._poll_once()  # connected before the block starts
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._client.close()

    def check(self) -> None:
        """/healthz always 200 and never slower than `max_worst_s`; RSS never more than
        `max_rss_growth_mb` above the start (tests may raise either for their case)."""
        assert self.statuses == {200}, self.statuses
        assert self.worst_s < self.max_worst_s, f"/healthz took {self.worst_s:.2f} s"
        assert self.rss_growth_mb < self.max_rss_growth_mb, f"RSS +{self.rss_growth_mb:.0f} MB"

    def _poll_once(self) -> None:
        started = time.perf_counter()
        self.statuses.add(self._client.get("/healthz").status_code)
        self.worst_s = max(self.worst_s, time.perf_counter() - started)
        growth = self.server.memory_mib()["VmRSS"] - self._rss_start
        self.rss_growth_mb = max(self.rss_growth_mb, growth)

    def _poll(self) -> None:
        while not self._stop.wait(self.every):
            self._poll_once()


def run_wrk(
    url: str,
    path: str,
    bodies: list[str],
    *,
    connections: int,
    seconds: float,
    threads: int = 1,
    timeout_s: float = 10.0,
    pause_ms: int = 0,
) -> WrkResult:
    """One wrk run (bench.common.run_wrk) counting responses per status, each connection pausing
    `pause_ms` between requests (0: closed loop); wrk must be installed (make wrk)."""
    require_tool("wrk", target="wrk", package="Debian package wrk")
    with tempfile.TemporaryDirectory() as tmp:
        files = write_wrk_files(Path(tmp), bodies)
        return bench_run_wrk(
            url,
            path,
            files,
            connections,
            seconds,
            pause_ms,
            threads,
            timeout_s=timeout_s,
            statuses=True,
        )


# Fault-injection bundles: real ONNX graphs that misbehave inside ONNX Runtime.


def poison_classifier_graph() -> onnx.ModelProto:
    """The classifier contract, but any row whose pixels are all above 1.5 (a white image after
    normalisation) makes ORT fail: its per-row index into a 10-entry table becomes 1000, and
    Gather raises 'indices element out of data bounds' for the whole batch."""
    nodes, inits = classifier_parts(1, logits="clean_logits")
    nodes += [
        # poison index per row: 1000 * (min pixel > 1.5), as int64
        helper.make_node("ReduceMin", ["pixel_values", "all_axes"], ["row_min"], keepdims=0),
        helper.make_node("Greater", ["row_min", "threshold"], ["is_poison"]),
        helper.make_node("Cast", ["is_poison"], ["poison_i"], to=TensorProto.INT64),
        helper.make_node("Mul", ["poison_i", "big"], ["index"]),
        helper.make_node("Gather", ["table", "index"], ["offset"], axis=0),  # (B,)
        helper.make_node("Unsqueeze", ["offset", "one_axis"], ["offset_col"]),
        helper.make_node("Add", ["clean_logits", "offset_col"], ["logits"]),
    ]
    inits += [
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "all_axes"),
        numpy_helper.from_array(np.array(1.5, np.float32), "threshold"),
        numpy_helper.from_array(np.array(1000, np.int64), "big"),
        numpy_helper.from_array(np.zeros(10, np.float32), "table"),
        numpy_helper.from_array(np.array([1], np.int64), "one_axis"),
    ]
    return classifier_model(nodes, inits)


def heavy_classifier_graph(width: int = 512, layers: int = 6) -> onnx.ModelProto:
    """The classifier contract with real compute behind it (49 tokens x `layers` dense
    `width` x `width` layers, ~2*49*width^2*layers FLOPs per image), so that inference, not
    HTTP, is what saturates first: the regime the overload test is about."""
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Reshape", ["pixel_values", "tok_shape"], ["pixels"]),
        helper.make_node("MatMul", ["pixels", "w_embed"], ["h0"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([0, 49, 16], np.int64), "tok_shape"),
        numpy_helper.from_array(rng.normal(0, 0.25, (16, width)).astype(np.float32), "w_embed"),
    ]
    for i in range(layers):
        w = rng.normal(0, 1.0 / np.sqrt(width), (width, width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [
            helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"m{i}"]),
            helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"]),
        ]
    nodes += [
        *_attention_block(f"h{layers}", 49, width, 0.6),
        helper.make_node("ReduceMean", ["att", "mean_axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w_head"], ["logits"]),
    ]
    inits += [
        numpy_helper.from_array(np.array([1, 2], np.int64), "mean_axes"),
        numpy_helper.from_array(rng.normal(0, 0.2, (width, 10)).astype(np.float32), "w_head"),
        *_attention_inits(49, width),
    ]
    return classifier_model(nodes, inits)


def write_classifier(root: Path, name: str, graph: onnx.ModelProto) -> Path:
    """A classification bundle `name` with the Fashion-MNIST preprocessing and labels."""
    return write_bundle(root / name / "1", graph, _manifest(name, "classification", 28, FASHION))
