"""The CPU depth-study driver: its plan, where a run stands, and a real two-step run on the
Fashion-MNIST fixture that is filed, skipped once done and resumed from its train_state.pt."""

import json
from pathlib import Path

import pytest

from training import depth_cpu
from training.gpu_runs import SIMILARITY

FIXTURES = Path(__file__).parents[1] / "fixtures" / "fashion-mnist"


def test_plan_pairs_attention_and_trains_shallow_first():
    runs = depth_cpu.plan()
    assert len(runs) == 18 and len({r.name for r in runs}) == 18
    assert [int(r.args[r.args.index("--depth") + 1]) for r in runs] == [6] * 6 + [12] * 6 + [24] * 6
    for first, second in zip(runs[::2], runs[1::2], strict=True):
        differ = [(a, b) for a, b in zip(first.args, second.args, strict=True) if a != b]
        assert differ == [("neutreno", "softmax")]  # same seed, steps and recipe
    assert all(r.args[r.args.index("--threads") + 1] == "1" for r in runs)


def test_stage_follows_the_files(tmp_path):
    run = depth_cpu.plan(steps=5, depths=(2,), seeds=(0,))[0]
    runs_dir, study = tmp_path / "runs", tmp_path / "study"
    folder = runs_dir / run.name
    assert depth_cpu.stage(run, runs_dir, study) == "new"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x")
    assert depth_cpu.stage(run, runs_dir, study) == "dirty"
    assert depth_cpu.train_command(run, runs_dir, "dirty")[-1] == "--force"
    (folder / "train_state.pt").write_bytes(b"x")
    assert depth_cpu.stage(run, runs_dir, study) == "partial"
    assert depth_cpu.train_command(run, runs_dir, "partial")[-1] == "--resume"
    (folder / "metrics.json").write_text(json.dumps({"step": 3}))
    assert depth_cpu.stage(run, runs_dir, study) == "partial"  # metrics of an unfinished run
    (folder / "metrics.json").write_text(json.dumps({"step": 5}))
    assert depth_cpu.stage(run, runs_dir, study) == "trained"
    (study / run.name).mkdir(parents=True)
    (study / run.name / SIMILARITY).write_text("[0.5, 0.6]")
    assert depth_cpu.stage(run, runs_dir, study) == "done"


@pytest.mark.timeout(300)
def test_runs_train_file_skip_and_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUTRENO_FASHION_MNIST_DIR", str(FIXTURES))
    plan = depth_cpu.plan(steps=2, depths=(1,), seeds=(0,))[:1]
    runs_dir, study = tmp_path / "runs", tmp_path / "study"
    filed = depth_cpu.run_all(plan, runs_dir, study)
    assert [p.name for p in filed] == ["depth1-neutreno-s0"]
    assert len(json.loads((filed[0] / SIMILARITY).read_text())) == 1
    assert json.loads((filed[0] / "metrics.json").read_text())["step"] == 2
    assert not (filed[0] / "model.safetensors").exists()  # small files only
    assert depth_cpu.run_all(plan, runs_dir, study) == []  # done: skipped
    (filed[0] / SIMILARITY).unlink()
    (runs_dir / plan[0].name / "metrics.json").unlink()  # as if stopped after its last eval
    assert depth_cpu.stage(plan[0], runs_dir, study) == "partial"
    assert [p.name for p in depth_cpu.run_all(plan, runs_dir, study)] == ["depth1-neutreno-s0"]
    commands = json.loads((study / plan[0].name / "metrics.json").read_text())["commands"]
    assert len(commands) == 2 and commands[1].endswith("--resume")
    report = "\n".join(depth_cpu.report(study))
    assert "| 1 | neutreno | 1 | 2 |" in report and "--resume" not in report
    assert (study / "depth_study.png").stat().st_size > 0
