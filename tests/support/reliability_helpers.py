"""Reliability test helpers: a watch on a live server's health and memory, wrk, graphs.

The server is a real `neutreno serve` process (bench.live_server.LiveServer, started with
support.service_helpers.start_server), as in production; its 5xx count is read from its own
`neutreno_requests_total`, which counts every response the app sent, whoever the client was.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

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


# wrk: a C load generator; the Lua script cycles through one request body per line and
# reports per-status counts, latency percentiles and Retry-After presence as one JSON line.
WRK_SCRIPT = r"""
local bodies, path, i, pause = {}, nil, 0, 0
statuses, retry_missing = {}, 0  -- globals: done() reads them from each thread with t:get
local threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function(args)
  path = args[1]
  pause = tonumber(args[3] or "0")
  local f = assert(io.open(args[2], "r"))
  for line in f:lines() do bodies[#bodies + 1] = line end
  f:close()
  statuses, retry_missing = {}, 0
end
delay = function() return pause end
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, bodies[i])
end
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 429 and headers["Retry-After"] == nil and headers["retry-after"] == nil then
    retry_missing = retry_missing + 1
  end
end
done = function(summary, latency, requests)
  local merged, missing = {}, 0
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for k, v in pairs(s) do merged[k] = (merged[k] or 0) + v end
    missing = missing + t:get("retry_missing")
  end
  local parts = {}
  for k, v in pairs(merged) do parts[#parts + 1] = string.format('"%d": %d', k, v) end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, '
    .. '"socket_errors": %d, "timeouts": %d, "retry_after_missing": %d, "statuses": {%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect + e.read + e.write, e.timeout, missing, table.concat(parts, ", ")))
end
"""


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
) -> dict:
    """One wrk run, each connection pausing `pause_ms` between requests (0: closed loop);
    returns the RESULT record plus `rate` (responses/s)."""
    wrk = require_tool("wrk", target="wrk", package="Debian package wrk")
    with tempfile.TemporaryDirectory() as tmp:
        script, data = Path(tmp, "load.lua"), Path(tmp, "bodies.txt")
        script.write_text(WRK_SCRIPT)
        data.write_text("\n".join(bodies) + "\n")
        cmd = [
            wrk,
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{seconds:g}s",
            "--timeout",
            f"{timeout_s:g}s",
            "-s",
            str(script),
            url,
            "--",
            path,
            str(data),
            str(pause_ms),
        ]
        out = subprocess.run(
            cmd, capture_output=True, text=True, check=True, timeout=seconds + 60
        ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    result["statuses"] = {int(k): v for k, v in result["statuses"].items()}
    result["rate"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


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
