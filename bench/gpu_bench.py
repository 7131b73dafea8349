"""The GPU table in one command: `neutreno bench gpu` (on a CUDA host with onnxruntime-gpu).

Runs, on the one machine, with NEUTRENO_DEVICE=cuda:
1. ONNX Runtime alone on the classifier bundle, input and output bound on the device (IO
   binding, so no PCIe copy is timed): images/s at each `--ort-batches` size;
2. `neutreno bench serve` with `--workers` front ends at 1 and `--clients` clients (wrk), which
   gives req/s, p50/p99/p99.9 and the mean engine batch;
3. `neutreno bench generation` at 1, 16 and 64 streams, spread over load processes.
Each part's markdown goes to `--out-dir` and all of it to stdout; docs/BENCHMARKS.md's GPU
section is this output with the machine named.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench import generation_bench, serve_bench
from bench.common import ROOT, machine, print_markdown
from export.bundle import LOGITS
from service.engine.runtime import CUDA
from service.settings import Settings


def gpu_name() -> str:
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown GPU (nvidia-smi not found)"


def ort_alone(bundle: Path, batches: list[int], seconds: float) -> str:
    """Images/s of the bare session with the input resident on the device."""
    settings = Settings(model_repository=bundle.parent.parent, device="cuda")
    session = ort.InferenceSession(
        str(bundle / "model.onnx"), providers=[(CUDA, settings.cuda_provider_options)]
    )
    spec = session.get_inputs()[0]
    dtype = np.float16 if "float16" in spec.type else np.float32
    lines = ["| batch | images/s | ms per batch |", "| ---: | ---: | ---: |"]
    for batch in batches:
        shape = [batch, *(d if isinstance(d, int) else batch for d in spec.shape[1:])]
        value = ort.OrtValue.ortvalue_from_numpy(
            np.zeros(shape, dtype), "cuda", settings.cuda_device_id
        )
        binding = session.io_binding()
        binding.bind_ortvalue_input(spec.name, value)
        binding.bind_output(LOGITS, "cuda", settings.cuda_device_id)
        for _ in range(3):
            session.run_with_iobinding(binding)
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            session.run_with_iobinding(binding)
            runs += 1
        binding.synchronize_outputs()
        elapsed = time.perf_counter() - started
        lines.append(f"| {batch} | {runs * batch / elapsed:,.0f} | {elapsed / runs * 1e3:.3f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="neutreno bench gpu", description=__doc__.splitlines()[0])
    p.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench-gpu")
    p.add_argument(
        "--workers",
        default=str(max(1, (os.cpu_count() or 2) - 2)),
        help="NEUTRENO_WORKERS counts for the serve part (comma-separated)",
    )
    p.add_argument("--clients", default="1,64,256")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--wrk-threads", type=int, default=4)
    p.add_argument("--max-batch-size", type=int, default=256)
    p.add_argument("--ort-batches", default="256,1024")
    p.add_argument("--streams", default="1,16,64")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: ort,serve,generation")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if CUDA not in ort.get_available_providers():
        print(
            "neutreno bench gpu: onnxruntime has no CUDAExecutionProvider "
            "(pip install onnxruntime-gpu)",
            file=sys.stderr,
        )
        return 2
    os.environ["NEUTRENO_DEVICE"] = "cuda"  # every server below inherits it
    skip = set(args.skip.split(","))
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    print_markdown(f"GPU: {gpu_name()}; host: {machine()}.\n", out / "machine.md")
    if "ort" not in skip:
        table = ort_alone(
            args.repository / "fashion-classifier" / "1",
            [int(b) for b in args.ort_batches.split(",")],
            3.0,
        )
        print_markdown(
            "ORT CUDA alone, fashion-classifier, input bound on the device:\n\n" + table,
            out / "ort.md",
        )
    if "serve" not in skip:
        serve_bench.main(
            [
                "--repository",
                str(args.repository),
                "--clients",
                args.clients,
                "--workers",
                args.workers,
                "--duration",
                str(args.duration),
                "--wrk-threads",
                str(args.wrk_threads),
                "--max-batch-size",
                str(args.max_batch_size),
                "--queue-delay-ms",
                "2",
                "--out",
                str(out / "serve.md"),
            ]
        )
    if "generation" not in skip:
        generation_bench.main(
            [
                "--model-repository",
                str(args.repository),
                "--concurrency",
                args.streams,
                "--requests",
                "64",
                "--max-tokens",
                "128",
                "--client-procs",
                "8",
                "--workers",
                args.workers.split(",")[-1],
                "--no-baselines",
                "--out",
                str(out / "generation.md"),
            ]
        )
    return 0
