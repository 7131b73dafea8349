"""ORT CPU latency of the FidelityAttention graph vs the plain-softmax graph of the same classifier.

    python -m bench.attention_overhead \
        --fidelity model_repository/fashion-classifier/1/model.onnx \
        --softmax build/fashion-classifier-softmax.onnx      # from `neutreno export
        --softmax-baseline`
    python -m bench.attention_overhead --random vit-fashion  # export both from random weights

Sessions are created as the service creates them (`export.fusion.session_model`: attention fused
onto com.microsoft MultiHeadAttention, telemetry gated and computed as the bundle does unless
fed off); --portable runs the FidelityAttention graph as shipped instead (the function bodies
stock onnxruntime inlines). --baseline fused exports the softmax model with lam = 0 through the
same FidelityAttention node, so both sides run the same fused kernel (with --random only).
The two sessions run alternately, call by call, so background load hits both alike; the table
reports median latency per batch and the overhead ratio (target: under 3%).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.runtime import session


def export_pair(
    name: str,
    folder: Path,
    *,
    fp16: bool = False,
    baseline: str = "standard",
    overrides: dict[str, object] | None = None,
) -> tuple[Path, Path]:
    """Both graphs of a randomly initialised registry classifier (latency does not need training),
    same weights: NeuTRENO, and softmax as the standard opset-23 `Attention` (baseline
    "standard") or as FidelityAttention with lam = 0 (baseline "fused")."""
    import dataclasses

    import onnx

    from export.graphs import export_model
    from models import build_model, create_model, get_config

    overrides = overrides or {}
    cfg = get_config(name, **overrides)
    model = build_model(cfg).eval()
    baseline_cfg = dataclasses.replace(cfg, attention="softmax")
    softmax = create_model(name, **overrides, attention="softmax").eval()
    softmax.load_state_dict(model.state_dict())
    paths = folder / "fidelity.onnx", folder / "softmax.onnx"
    onnx.save(export_model(model, cfg, fp16=fp16), str(paths[0]))
    onnx.save(
        export_model(softmax, baseline_cfg, standard=baseline == "standard", fp16=fp16),
        str(paths[1]),
    )
    return paths


def pixel_batch(sess: ort.InferenceSession, batch: int) -> dict[str, np.ndarray]:
    spec = sess.get_inputs()[0]
    shape = [batch, *spec.shape[1:]]
    return {spec.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}


def time_pair(
    a: ort.InferenceSession, b: ort.InferenceSession, batch: int, repeats: int
) -> tuple[float, float, float, float]:
    """Median seconds per call of a and b, measured alternately after a warm-up: wall clock
    (a, b), then process CPU time (a, b), which other load on the machine barely moves."""
    feed_a, feed_b = pixel_batch(a, batch), pixel_batch(b, batch)
    times: tuple[list[float], ...] = ([], [], [], [])
    for i in range(repeats + 3):
        for k, (sess, feed) in enumerate(((a, feed_a), (b, feed_b))):
            start, cpu = time.perf_counter(), time.process_time()
            sess.run(None, feed)
            if i >= 3:
                times[k].append(time.perf_counter() - start)
                times[k + 2].append(time.process_time() - cpu)
    wall_a, wall_b, cpu_a, cpu_b = (statistics.median(t) for t in times)
    return wall_a, wall_b, cpu_a, cpu_b


def table(rows: list[tuple[int, float, float, float, float]], threads: int, mode: str) -> str:
    """The markdown table (wall clock), then the same ratios in process CPU time."""
    lines = [
        f"ORT {ort.__version__} CPU, {threads} intra-op thread(s), {mode}, median latency",
        "",
        "| batch | FidelityAttention (ms) | softmax Attention (ms) | overhead |",
        "| ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {b} | {f * 1e3:.3f} | {s * 1e3:.3f} | {100 * (f / s - 1):+.1f}% |"
        for b, f, s, _, _ in rows
    ]
    lines += [
        "",
        "Process CPU time per call (robust to other load): "
        + "; ".join(
            f"batch {b}: {f * 1e3:.3f} vs {s * 1e3:.3f} ms ({100 * (f / s - 1):+.1f}%)"
            for b, _, _, f, s in rows
        ),
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="bench.attention_overhead",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--fidelity", type=Path, help="FidelityAttention model.onnx")
    ap.add_argument("--softmax", type=Path, help="plain softmax (standard Attention) .onnx")
    ap.add_argument("--random", metavar="VARIANT", help="export both from a random registry model")
    ap.add_argument(
        "--baseline",
        choices=["standard", "fused"],
        default="standard",
        help="softmax export for --random: standard Attention or lam=0 fused",
    )
    ap.add_argument(
        "--portable",
        action="store_true",
        help="run the graphs as shipped (function bodies), not fused",
    )
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (0 = ORT default)")
    args = ap.parse_args(argv)
    if not args.random and not (args.fidelity and args.softmax):
        ap.error("give --fidelity and --softmax, or --random VARIANT")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        paths = (
            export_pair(args.random, Path(tmp), baseline=args.baseline)
            if args.random
            else (args.fidelity, args.softmax)
        )
        fid, soft = (session(p, threads=args.threads, fused=not args.portable) for p in paths)
    rows = []
    for batch in args.batches:
        repeats = max(5, args.repeats // max(1, batch // 8))
        rows.append((batch, *time_pair(fid, soft, batch, repeats)))
    mode = "portable function bodies" if args.portable else "fused as in the service"
    print(table(rows, args.threads, mode))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
