"""Roofline of batched classifier inference in ONNX Runtime: `neutreno bench roofline`.

In one run, on the same machine state:

1. the machine's fp32 matmul peak: numpy (OpenBLAS) and an ORT MatMul graph, n = 2048, all
   cores, best of several runs;
2. the model's FLOPs per image, counted from the bundle's own graph (functions inlined; the
   exact shape of every intermediate read back from one ORT run): 2 FLOPs per multiply-add of
   MatMul / Gemm / Conv / Attention (QK^T and AV); elementwise work is not counted;
3. images/s of `session.run` over batch sizes, intra-op thread counts, graph optimisation
   levels, spinning and IO binding; efficiency = FLOPs/image x images/s / peak;
4. where the time goes: ORT's profiler on the best configuration, time by operator type, and
   the serving path's per-image preprocessing cost (base64 + PNG decode + normalise);
5. the matmul shapes of the model timed alone, to show the ceiling small-K GEMMs have.

Prints (and with --out writes) markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
from onnx import TensorProto, helper

from bench.common import ROOT, machine, print_markdown, request_bodies

LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def timed(fn: Callable[[], object], min_seconds: float = 1.0, min_runs: int = 3) -> float:
    """Seconds per call: best mean over a few blocks of at least `min_seconds`."""
    fn()
    best = float("inf")
    for _ in range(min_runs):
        n, start = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds / min_runs and n >= 2:
                break
        best = min(best, elapsed / n)
    return best


# 1. peak ------------------------------------------------------------------------------------


def numpy_peak(n: int = 2048) -> float:
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    return 2 * n**3 / timed(lambda: a @ b, 3.0)


def ort_matmul_session(m: int, k: int, n: int, threads: int = 0) -> ort.InferenceSession:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "mm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [m, n])],
        [
            onnx.numpy_helper.from_array(
                np.random.default_rng(1).random((k, n), dtype=np.float32), "b"
            )
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def ort_peak(n: int = 2048, threads: int = 0) -> float:
    sess = ort_matmul_session(n, n, n, threads)
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    return 2 * n**3 / timed(lambda: sess.run(None, {"a": a}), 3.0)


# 2. FLOPs -----------------------------------------------------------------------------------


def _all_shapes(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """The concrete shape of every value in the graph, from one unoptimised ORT run."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for out in node.output:
            if out and out not in known:
                probe.graph.output.append(helper.make_empty_tensor_value_info(out))
                known.add(out)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    shapes = {n: tuple(np.shape(v)) for n, v in zip(names, sess.run(names, feeds), strict=True)}
    shapes.update({k: tuple(v.shape) for k, v in feeds.items()})
    shapes.update({i.name: tuple(i.dims) for i in probe.graph.initializer})
    return shapes


def count_flops(
    path: Path, input_shape: tuple[int, ...]
) -> tuple[float, dict[str, float], list[tuple[int, int, int]]]:
    """(FLOPs per image, FLOPs by op type, distinct (M, K, N) matmul shapes) at batch 1."""
    model = onnx.inliner.inline_local_functions(onnx.load(str(path)))
    name = model.graph.input[0].name
    feeds = {name: np.zeros(input_shape, np.float32)}
    shapes = _all_shapes(model, feeds)
    by_op: dict[str, float] = defaultdict(float)
    gemms: list[tuple[int, int, int]] = []
    for node in model.graph.node:
        ins = [shapes.get(i) for i in node.input]
        out = shapes.get(node.output[0]) if node.output else None
        if node.op_type == "MatMul" and ins[0] and ins[1] and out:
            k = ins[0][-1]
            flops = 2.0 * float(np.prod(out)) * k
            gemms.append((int(np.prod(out[:-1])), k, out[-1]))
        elif node.op_type == "Gemm" and out and ins[0]:
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            k = ins[0][0] if trans_a else ins[0][1]
            flops = 2.0 * float(np.prod(out)) * k
            gemms.append((out[0], k, out[1]))
        elif node.op_type == "Conv" and out and ins[1]:  # weight dim 1 is C_in / group
            flops = 2.0 * float(np.prod(out)) * ins[1][1] * float(np.prod(ins[1][2:]))
        elif node.op_type == "Attention" and ins[0] and ins[1] and ins[2]:
            q, k_, v = ins[0], ins[1], ins[2]
            present = (
                shapes.get(node.output[1]) if len(node.output) > 1 and node.output[1] else None
            )
            length = present[-2] if present else k_[-2]
            if len(q) == 4:  # (B, H, S, D)
                b, h, s, d = q
                dv = v[-1]
            else:  # (B, S, H*D): head count from the attributes
                heads = next(a.i for a in node.attribute if a.name == "q_num_heads")
                b, s, hd = q
                h, d, dv = heads, hd // heads, v[-1] // heads
            flops = 2.0 * b * h * s * length * (d + dv)
        else:
            continue
        by_op[node.op_type] += flops
    total = sum(by_op.values()) / input_shape[0]
    return total, dict(by_op), sorted(set(gemms))


# 3. throughput ------------------------------------------------------------------------------


def session(
    path: Path, threads: int, level: str = "all", spinning: bool = False, profile: str | None = None
) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = LEVELS[level]
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def images_per_second(
    sess: ort.InferenceSession,
    input_shape: tuple[int, ...],
    batch: int,
    io_binding: bool = False,
    seconds: float = 1.5,
) -> float:
    x = np.random.default_rng(0).standard_normal((batch, *input_shape[1:])).astype(np.float32)
    name = sess.get_inputs()[0].name
    if not io_binding:
        return batch / timed(lambda: sess.run(None, {name: x}), seconds)
    binding = sess.io_binding()
    binding.bind_cpu_input(name, x)
    for out in sess.get_outputs():
        binding.bind_output(out.name)
    return batch / timed(lambda: sess.run_with_iobinding(binding), seconds)


# 4. profile ---------------------------------------------------------------------------------


def profile_ops(
    path: Path, input_shape: tuple[int, ...], batch: int, threads: int, runs: int = 30
) -> list[tuple[str, float, int]]:
    """(op type, share of node time, node count) from ORT's profiler, largest first."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(path, threads, profile=os.path.join(tmp, "ort"))
        x = np.random.default_rng(0).standard_normal((batch, *input_shape[1:])).astype(np.float32)
        name = sess.get_inputs()[0].name
        for _ in range(runs):
            sess.run(None, {name: x})
        trace = json.loads(Path(sess.end_profiling()).read_text())
    by_op: dict[str, float] = defaultdict(float)
    nodes: dict[str, set[str]] = defaultdict(set)
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"].get("op_name", "?")
            by_op[op] += event["dur"]
            nodes[op].add(event["name"])
    total = sum(by_op.values()) or 1.0
    return sorted(((op, t / total, len(nodes[op])) for op, t in by_op.items()), key=lambda r: -r[1])


def preprocessing_us(manifest: dict[str, Any]) -> float:
    """Per-image cost of the serving path before ORT: base64 + PNG decode + normalise."""
    from service.frontend import imaging

    bodies = [json.loads(b)["image"] for b in request_bodies(64)]
    pre = manifest["preprocessing"]

    def run() -> None:
        for text in bodies:
            img = imaging.open_image(imaging.decode_base64(text), 1 << 24)
            imaging.preprocess(imaging.load_pixels(img), pre)

    return 1e6 * timed(run, 1.0) / len(bodies)


# report -------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="neutreno bench roofline", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=ROOT / "model_repository/fashion-classifier/1")
    p.add_argument("--batches", default="1,8,32,64,128,256")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--seconds", type=float, default=1.5, help="per measurement")
    p.add_argument("--out", type=Path)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    path = args.bundle / "model.onnx"
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    shape = tuple(1 if isinstance(d, str) else int(d) for d in manifest["inputs"][0]["shape"])
    cores = os.cpu_count() or 1
    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    peak_np = numpy_peak()
    peak_ort = ort_peak()
    peak_1 = ort_peak(threads=1)
    peak = max(peak_np, peak_ort)
    log(
        f"peak: numpy {peak_np / 1e9:.1f}, ORT {peak_ort / 1e9:.1f}, "
        f"ORT 1 thread {peak_1 / 1e9:.1f} GFLOP/s"
    )
    flops, by_op, gemms = count_flops(path, shape)
    log(f"model: {flops / 1e6:.2f} MFLOP/image {by_op}")

    rows = []  # (threads, level, spinning, io_binding, batch, img/s)
    for t in threads:
        sess = session(path, t)
        for b in batches:
            rows.append(
                (t, "all", False, False, b, images_per_second(sess, shape, b, seconds=args.seconds))
            )
            log(f"  threads={t} batch={b}: {rows[-1][-1]:.0f} img/s")
    best = max(rows, key=lambda r: r[-1])
    best_t, best_b = best[0], best[4]
    variants = []
    for level in ("basic", "extended"):
        sess = session(path, best_t, level)
        variants.append(
            (
                best_t,
                level,
                False,
                False,
                best_b,
                images_per_second(sess, shape, best_b, seconds=args.seconds),
            )
        )
    sess = session(path, best_t, "all", spinning=True)
    variants.append(
        (
            best_t,
            "all",
            True,
            False,
            best_b,
            images_per_second(sess, shape, best_b, seconds=args.seconds),
        )
    )
    sess = session(path, best_t)
    variants.append(
        (
            best_t,
            "all",
            False,
            True,
            best_b,
            images_per_second(sess, shape, best_b, io_binding=True, seconds=args.seconds),
        )
    )
    for v in variants:
        log(f"  variant {v}")
    top = max(rows + variants, key=lambda r: r[-1])
    ops = profile_ops(path, shape, top[4], top[0])
    pre_us = preprocessing_us(manifest)

    # the model's own GEMM shapes alone, at the best batch, on the best thread count
    gemm_rows = []
    for m, k, n in gemms:
        mm = ort_matmul_session(m * top[4], k, n, top[0])
        a = np.random.default_rng(0).random((m * top[4], k), dtype=np.float32)
        flops = 2 * m * top[4] * k * n

        def run(mm: ort.InferenceSession = mm, a: np.ndarray = a) -> object:
            return mm.run(None, {"a": a})

        gemm_rows.append((m, k, n, flops / timed(run, 0.5)))

    def eff(img_s: float) -> str:
        return f"{100 * flops * img_s / peak:.1f}%"

    lines = [
        f"Bundle `{args.bundle}` ({manifest.get('name')}, attention "
        f"{manifest.get('attention')}, lam {manifest.get('lam')}), input {list(shape)}.",
        f"Machine: {machine()}; {cores} logical CPUs; numpy {np.__version__}.",
        "",
        f"- fp32 matmul peak (n=2048, measured in this run): numpy {peak_np / 1e9:.1f} "
        f"GFLOP/s, ORT MatMul {peak_ort / 1e9:.1f} GFLOP/s (1 thread: {peak_1 / 1e9:.1f}); "
        f"peak used = {peak / 1e9:.1f} GFLOP/s.",
        f"- model FLOPs per image (2 x multiply-adds of "
        f"{', '.join(sorted(by_op))}): {flops / 1e6:.2f} MFLOP "
        f"({', '.join(f'{k} {v / shape[0] / 1e6:.2f}' for k, v in sorted(by_op.items()))}).",
        f"- serving-path preprocessing (base64 + PNG decode + normalise, one thread): "
        f"{pre_us:.0f} us/image.",
        "",
        "| intra-op threads | graph opt | spinning | IO binding | batch | images/s | GFLOP/s "
        "| % of peak |",
        "| ---: | :--- | :--- | :--- | ---: | ---: | ---: | ---: |",
    ]
    for t, level, spin, iob, b, img_s in rows + variants:
        lines.append(
            f"| {t} | {level} | {'on' if spin else 'off'} | {'on' if iob else 'off'} "
            f"| {b} | {img_s:.0f} | {flops * img_s / 1e9:.1f} | {eff(img_s)} |"
        )
    lines += [
        "",
        f"Best: {top[-1]:.0f} images/s = {flops * top[-1] / 1e9:.1f} GFLOP/s = "
        f"**{eff(top[-1])} of the measured peak** (threads {top[0]}, batch {top[4]}).",
        "",
        "ORT profile at that configuration (node time by operator type):",
        "",
        "| op | share of node time | nodes |",
        "| :--- | ---: | ---: |",
    ]
    for op, share, count in ops[:14]:
        lines.append(f"| {op} | {100 * share:.1f}% | {count} |")
    lines += [
        "",
        f"The model's GEMM shapes alone (rows x batch {top[4]}), ORT MatMul, {top[0]} thread(s):",
        "",
        "| M (per image) | K | N | GFLOP/s | % of peak |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for m, k, n, rate in gemm_rows:
        lines.append(f"| {m} | {k} | {n} | {rate / 1e9:.1f} | {100 * rate / peak:.1f}% |")
    print_markdown("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
