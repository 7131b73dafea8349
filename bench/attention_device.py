"""Images/s of NeuTRENO vs softmax in ONNX Runtime (fp32, fp16) and PyTorch (eager fp32, bf16
autocast), input already on the device, for the GPU targets of issue 14.

    neutreno bench attention-device --random deit-tiny --batch 256 --device cuda

Both models of each pair share random weights (`bench.attention_overhead.export_pair`). ORT
sessions are created as the service creates them (`export.runtime.session`: fused attention,
gated telemetry) and run through IO binding with the input and outputs bound on the device and
the telemetry flag off, so neither a host copy of the batch nor the similarity subgraph is
timed; torch runs `model(x)` (logits only) under inference_mode. Calls alternate NeuTRENO /
softmax after a warm-up; the table gives batch / median seconds per call.
Works on CPU too (`--device cpu`), which the tests use as a smoke run with tiny sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bench.attention_overhead import export_pair
from bench.common import machine
from export.runtime import session
from export.telemetry import SIMILARITY_FLAG
from models import create_model
from models.segmenter import Segmenter
from models.vit import ViT

Runner = Callable[[], None]


def ort_runner(path: Path, device: str, batch: int, fp16: bool) -> Runner:
    """One IO-bound ORT call on a fixed random batch (input and outputs on `device`)."""
    providers = None
    if device == "cuda":
        ort.preload_dlls()  # CUDA / cuDNN from the nvidia wheels torch installed
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    sess = session(path, providers=providers)
    if device == "cuda" and sess.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"onnxruntime did not start its CUDA provider ({sess.get_providers()})")
    spec = sess.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([batch, *spec.shape[1:]])
    binding = sess.io_binding()
    binding.bind_ortvalue_input(
        spec.name,
        ort.OrtValue.ortvalue_from_numpy(x.astype(np.float16 if fp16 else np.float32), device, 0),
    )
    if SIMILARITY_FLAG in {i.name for i in sess.get_overridable_initializers()}:
        # bind_cpu_input refuses an overridable initializer; an OrtValue (on the CPU, where
        # If reads its condition) is accepted
        binding.bind_ortvalue_input(
            SIMILARITY_FLAG, ort.OrtValue.ortvalue_from_numpy(np.array(False))
        )
    for out in sess.get_outputs():
        binding.bind_output(out.name, device)
    return lambda: sess.run_with_iobinding(binding)


def torch_runner(model: torch.nn.Module, device: str, batch: int, bf16: bool) -> Runner:
    """One `model(x)` call, eager fp32 or under bf16 autocast, synchronised on CUDA."""
    assert isinstance(model, ViT | Segmenter), type(model)  # --random names a vision model
    model = model.to(device).eval()
    cfg = model.cfg
    x = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, device=device)

    def run() -> None:
        with torch.inference_mode(), torch.autocast(device, torch.bfloat16, enabled=bf16):
            model(x)
        if device == "cuda":
            torch.cuda.synchronize()

    return run


def time_pair(a: Runner, b: Runner, repeats: int, warmup: int = 3) -> tuple[float, float]:
    """Median seconds per call of a and b, called alternately after `warmup` calls each."""
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(warmup + repeats):
        for run, out in ((a, times[0]), (b, times[1])):
            start = time.perf_counter()
            run()
            if i >= warmup:
                out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def torch_pair(name: str, overrides: dict[str, object]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """NeuTRENO and softmax torch models with the same random weights."""
    torch.manual_seed(0)
    neutreno = create_model(name, **overrides)
    softmax = create_model(name, **overrides, attention="softmax")
    softmax.load_state_dict(neutreno.state_dict())
    return neutreno, softmax


def exported(args: argparse.Namespace, folder: Path, fp16: bool) -> tuple[Path, Path]:
    """The (NeuTRENO, softmax) pair in folder/fp32 or folder/fp16, exported unless already there
    (so a pair exported on one machine can be timed on another)."""
    sub = folder / ("fp16" if fp16 else "fp32")
    paths = sub / "fidelity.onnx", sub / "softmax.onnx"
    if not all(p.is_file() for p in paths):
        sub.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        paths = export_pair(
            args.random, sub, fp16=fp16, baseline=args.baseline, overrides=args.overrides
        )
    return paths


def measure(args: argparse.Namespace, folder: Path) -> list[tuple[str, str, float, float]]:
    """(runtime, precision, NeuTRENO s/call, softmax s/call) for every row of the table."""
    rows = []
    for fp16 in (False, True):
        paths = exported(args, folder, fp16)
        neutreno, softmax = (ort_runner(p, args.device, args.batch, fp16) for p in paths)
        rows.append(
            (
                "ORT, IO binding",
                "fp16" if fp16 else "fp32",
                *time_pair(neutreno, softmax, args.repeats),
            )
        )
    models = torch_pair(args.random, args.overrides)
    for bf16 in (False, True):
        neutreno, softmax = (torch_runner(m, args.device, args.batch, bf16) for m in models)
        rows.append(
            (
                "torch",
                "bf16 autocast" if bf16 else "fp32 eager",
                *time_pair(neutreno, softmax, args.repeats),
            )
        )
    return rows


def markdown(rows: list[tuple[str, str, float, float]], args: argparse.Namespace) -> str:
    """The images/s table and the ratios the issue's targets name."""
    ips = {(r, p): (args.batch / n, args.batch / s) for r, p, n, s in rows}
    gpu = f"{torch.cuda.get_device_name()}, " if args.device == "cuda" else ""
    lines = [
        f"`{args.random}`, batch {args.batch}, {args.device}; {gpu}{machine()}; torch "
        f"{torch.__version__}; median of {args.repeats} alternating calls",
        "",
        "| runtime | precision | NeuTRENO (img/s) | softmax (img/s) | overhead |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r} | {p} | {ips[r, p][0]:,.0f} | {ips[r, p][1]:,.0f} | "
        f"{100 * (ips[r, p][1] / ips[r, p][0] - 1):+.1f}% |"
        for r, p, _, _ in rows
    ]
    ort16, ort32 = ips["ORT, IO binding", "fp16"][0], ips["ORT, IO binding", "fp32"][0]
    bf16, eager = ips["torch", "bf16 autocast"][0], ips["torch", "fp32 eager"][0]
    lines += [
        "",
        f"NeuTRENO: ORT fp16 / torch bf16 autocast = {ort16 / bf16:.2f}x "
        f"(target >= 0.8); ORT fp32 / torch eager fp32 = {ort32 / eager:.2f}x "
        "(target >= 1.0)",
    ]
    return "\n".join(lines)


def override(text: str) -> tuple[str, object]:
    """KEY=VALUE with an int value when it parses as one (e.g. depth=2)."""
    key, _, value = text.partition("=")
    return key, int(value) if value.lstrip("-").isdigit() else value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="neutreno bench attention-device",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--random",
        metavar="VARIANT",
        default="deit-tiny",
        help="registry vision model, random weights",
    )
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument(
        "--baseline",
        choices=["standard", "fused"],
        default="standard",
        help="ORT softmax export: standard Attention or lam=0 FidelityAttention",
    )
    ap.add_argument(
        "--exports",
        type=Path,
        metavar="DIR",
        help="keep the exported pairs in DIR/fp32, DIR/fp16 and reuse them there",
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        type=override,
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="model config overrides (e.g. depth=2 dim=32)",
    )
    args = ap.parse_args(argv)
    args.overrides = dict(args.overrides)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keep = contextlib.nullcontext(args.exports) if args.exports else tempfile.TemporaryDirectory()
    with keep as folder:
        print(markdown(measure(args, Path(folder)), args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
