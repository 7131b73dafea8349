"""The attention benchmarks on CPU at tiny sizes: the overhead table keeps its output contract
(bench/attention_overhead.py's docstring) and the device benchmark (written for a CUDA host) runs
end to end on the CPU."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from bench import attention_device, attention_overhead

TINY = ["depth=1", "dim=32", "heads=2", "img_size=32"]


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    torch.manual_seed(0)
    overrides = dict(attention_device.override(t) for t in TINY)
    return attention_overhead.export_pair(
        "deit-tiny", tmp_path_factory.mktemp("pair"), overrides=overrides
    )


@pytest.mark.parametrize("portable", [False, True])
def test_overhead_table_rows(
    tiny_pair: tuple[Path, Path], portable: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--fidelity",
        str(tiny_pair[0]),
        "--softmax",
        str(tiny_pair[1]),
        "--batches",
        "1",
        "3",
        "--repeats",
        "1",
    ] + (["--portable"] if portable else [])
    assert attention_overhead.main(argv) == 0
    out = capsys.readouterr().out
    assert "| batch | FidelityAttention (ms) | softmax Attention (ms) | overhead |" in out
    rows = re.findall(r"^\| (\d+) \| [\d.]+ \| [\d.]+ \| [+-][\d.]+% \|$", out, re.M)
    assert rows == ["1", "3"]
    assert re.search(r"batch 1: [\d.]+ vs [\d.]+ ms \([+-][\d.]+%\); batch 3:", out)
    assert ("portable function bodies" in out) == portable


def test_device_bench_runs_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--device",
        "cpu",
        "--batch",
        "2",
        "--repeats",
        "1",
        "--exports",
        str(tmp_path),
        "--set",
        *TINY,
    ]
    assert attention_device.main(argv) == 0
    out = capsys.readouterr().out
    for runtime, precision in [
        ("ORT, IO binding", "fp32"),
        ("ORT, IO binding", "fp16"),
        ("torch", "fp32 eager"),
        ("torch", "bf16 autocast"),
    ]:
        assert re.search(
            rf"^\| {runtime} \| {precision} \| [\d,]+ \| [\d,]+ \| [+-][\d.]+% \|$", out, re.M
        ), (runtime, precision, out)
    assert re.search(r"ORT fp16 / torch bf16 autocast = [\d.]+x", out)
    exported = tmp_path / "fp16" / "fidelity.onnx"
    stamp = exported.stat().st_mtime_ns
    assert attention_device.main(argv) == 0  # a second run times the exports it finds
    assert exported.stat().st_mtime_ns == stamp
