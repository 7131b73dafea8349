"""`neutreno bench <benchmark> [options]`: dispatch to one benchmark module's `main(argv)`.

A benchmark is a module in `bench/` with `main(argv) -> int`; add it to BENCHMARKS to expose it.
"""

from __future__ import annotations

import sys

from neutreno.cli import dispatch

BENCHMARKS = {
    "serve": (
        "bench.serve_bench",
        "HTTP throughput and p50/p99 at 1/8/32/64 clients, dynamic batching on vs off",
    ),
    "generation": (
        "bench.generation_bench",
        "LM tokens/s and TTFT at 1/4/8/16 streams vs a no-cache baseline",
    ),
    "attention": (
        "bench.attention_overhead",
        "ORT CPU latency: FidelityAttention vs plain softmax export, batch 1 and 64",
    ),
    "attention-device": (
        "bench.attention_device",
        "img/s NeuTRENO vs softmax: ORT fp32/fp16 (IO binding) vs torch eager/bf16",
    ),
    "peers": (
        "bench.peers_bench",
        "same classifier: NeuTRENO Serve vs FastAPI+PyTorch eager vs Ray Serve (wrk)",
    ),
    "roofline": (
        "bench.roofline",
        "ORT images/s vs measured fp32 matmul peak; threads, opt level; profile",
    ),
    "engine": (
        "bench.engine_bench",
        "engine and front-end CPU per request / per token with compute-free bundles",
    ),
    "grpc": (
        "bench.grpc_bench",
        "classify over gRPC vs HTTP JSON vs HTTP binary: req/s and per server CPU s",
    ),
    "coldstart": ("bench.coldstart", "process start to ready, RSS with the models loaded"),
    "soak": ("bench.soak", "10 min at 70% of capacity: p99 stability and RSS growth"),
    "gpu": (
        "bench.gpu_bench",
        "the GPU table: ORT alone, the service (wrk) and generation on a CUDA host",
    ),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("neutreno bench", BENCHMARKS, sys.argv[1:] if argv is None else argv)
