"""The one-GPU-call plan, the result packing and its unpacking, and the depth-study report."""

import json
from pathlib import Path

from training import depth_study, gpu_runs


def test_plan_pairs_every_study_depth_and_seed():
    runs = gpu_runs.plan(Path("d"), budget=100.0)
    study = [r for r in runs if r.study]
    assert len(study) == 18 and len({r.name for r in runs}) == len(runs)
    for depth in (6, 12, 24):
        for seed in (0, 1, 2):
            pair = [
                r.args
                for r in study
                if r.name.startswith(f"depth{depth}-") and r.name.endswith(f"-s{seed}")
            ]
            assert len(pair) == 2
            differ = [(a, b) for a, b in zip(*pair, strict=False) if a != b]
            assert differ == [("neutreno", "softmax")]  # same recipe, seed and budget
    assert all("--time-limit" in r.args for r in runs)


def _run(folder: Path, depth: int, attention: str, seed: int, top1: float) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"depth": depth, "attention": attention}))
    (folder / "metrics.json").write_text(
        json.dumps(
            {
                "top1": top1,
                "step": 100,
                "seed": seed,
                "command": f"neutreno train vit-fashion --seed {seed} --out r/depth{depth}-s{seed}",
            }
        )
    )
    (folder / gpu_runs.SIMILARITY).write_text(json.dumps([0.1 * (i + 1) for i in range(depth)]))


def test_pack_and_unpack_round_trip(tmp_path, monkeypatch):
    runs = tmp_path / "gpu-runs"
    _run(runs / "depth2-softmax-s0", 2, "softmax", 0, 0.8)
    (runs / "depth2-softmax-s0" / "model.safetensors").write_bytes(b"w" * 100)
    (runs / "classifier-x").mkdir()
    (runs / "classifier-x" / "model.safetensors").write_bytes(b"c" * 3000)
    monkeypatch.setattr(gpu_runs, "PART_BYTES", 1024)
    parts = gpu_runs.pack(runs, tmp_path / "out")
    assert len(parts) > 2 and all(p.stat().st_size <= 1024 for p in parts)
    back = gpu_runs.unpack(tmp_path / "out", tmp_path / "back")
    assert (back / "classifier-x" / "model.safetensors").read_bytes() == b"c" * 3000
    assert not (back / "depth2-softmax-s0" / "model.safetensors").exists()  # study: no weights
    assert (back / "depth2-softmax-s0" / gpu_runs.SIMILARITY).exists()


def test_depth_study_section_reports_mean_and_std_over_seeds(tmp_path):
    for seed, (a, b) in enumerate([(0.80, 0.70), (0.82, 0.72), (0.84, 0.74)]):
        _run(tmp_path / f"depth2-neutreno-s{seed}", 2, "neutreno", seed, a)
        _run(tmp_path / f"depth2-softmax-s{seed}", 2, "softmax", seed, b)
    lines = depth_study.section(tmp_path, tmp_path / "study.png")
    text = "\n".join(lines)
    assert "| 2 | neutreno | 3 | 100 | 82.00 +- 2.00 | 0.200 +- 0.000 |" in text
    assert "| 2 | softmax | 3 | 100 | 72.00 +- 2.00 |" in text
    assert "--seed {0,1,2}" in text and (tmp_path / "study.png").stat().st_size > 0
