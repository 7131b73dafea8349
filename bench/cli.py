"""`neutreno bench <benchmark> [options]`: dispatch to one benchmark module's `main(argv)`.

A benchmark is a module in `bench/` with `main(argv) -> int`; add it to BENCHMARKS to expose it.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "serve": ("bench.serve_bench",
              "HTTP throughput and p50/p99 at 1/8/32/64 clients, dynamic batching on vs off"),
    "generation": ("bench.generation_bench",
                   "LM tokens/s and TTFT at 1/4/8/16 streams vs a no-cache baseline"),
    "attention": ("bench.attention_overhead",
                  "ORT CPU latency: FidelityAttention vs plain softmax export, batch 1 and 64"),
    "peers": ("bench.peers_bench",
              "same classifier: NeuTRENO Serve vs FastAPI+PyTorch eager vs Ray Serve (wrk)"),
    "roofline": ("bench.roofline",
                 "ORT images/s vs measured fp32 matmul peak; threads, opt level; profile"),
    "coldstart": ("bench.coldstart", "process start to ready, RSS with the models loaded"),
    "soak": ("bench.soak", "10 min at 70% of capacity: p99 stability and RSS growth"),
}


def usage() -> str:
    lines = ["usage: neutreno bench <benchmark> [options]", "", "benchmarks:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in BENCHMARKS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in BENCHMARKS:
        print(f"neutreno bench: unknown benchmark {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)
