"""Training entry point on the committed fixtures: single process, resume, and 2-process
torchrun."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models.checkpoint import load_checkpoint
from training.data import kjv
from training.tasks import KJVTask
from training.train import is_best, lr_at, main, schedule_step

FIXTURES = Path(__file__).parents[1] / "fixtures"
FASHION = str(FIXTURES / "fashion-mnist")


def test_lr_schedule_warms_up_then_decays():
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, 10) == pytest.approx(0.05)
    assert lr_at(50, 100, 1.0, 10) < lr_at(20, 100, 1.0, 10)


def test_classifier_trains_checkpoints_and_resumes(tmp_path):
    out = tmp_path / "clf"
    common = [
        "vit-fashion",
        "--out",
        str(out),
        "--data-dir",
        FASHION,
        "--depth",
        "1",
        "--batch-size",
        "32",
        "--no-progress",
        "--seed",
        "3",
    ]
    assert main([*common, "--max-steps", "4"]) == 0
    first = json.loads((out / "metrics.json").read_text())
    assert first["step"] == 4 and 0.0 <= first["top1"] <= 1.0 and first["test_images"] == 64
    assert "neutreno train vit-fashion" in first["command"]
    assert main([*common, "--max-steps", "6", "--resume"]) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [4, 6]
    model, cfg = load_checkpoint(out)
    assert cfg.depth == 1 and model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_segmenter_trains_a_step(tmp_path, monkeypatch):
    monkeypatch.setattr("training.tasks.fashion.FashionScenesTask.scenes_per_epoch", 16)
    monkeypatch.setattr("training.tasks.fashion.FashionScenesTask.test_scenes", 8)
    out = tmp_path / "seg"
    assert (
        main(
            [
                "segmenter-fashion",
                "--out",
                str(out),
                "--data-dir",
                FASHION,
                "--depth",
                "1",
                "--batch-size",
                "8",
                "--max-steps",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["miou"] <= 1.0 and len(metrics["iou_per_class"]) == 11


def make_kjv_dir(tmp_path):
    data = tmp_path / "kjv"
    data.mkdir()
    text = (FIXTURES / "kjv-sample.txt").read_text()
    for split in ("train", "validation", "test"):
        (data / f"{split}.txt").write_text(text * (8 if split == "train" else 1))
    kjv.train_tokenizer(text, vocab_size=300).save(str(data / "tokenizer.json"))
    return data


def test_every_lm_epoch_has_at_least_steps_per_epoch_batches(tmp_path):
    task = KJVTask(str(make_kjv_dir(tmp_path)), block_size=16)
    steps = task.steps_per_epoch(4, 1)
    assert steps > 0
    for epoch in range(20):  # each epoch draws a new random window offset
        assert sum(1 for _ in task.batches(epoch, 4, 0, 1)) >= steps


def test_language_model_trains_and_reports_bpc(tmp_path):
    data = make_kjv_dir(tmp_path)
    out = tmp_path / "lm"
    assert (
        main(
            [
                "lm-kjv",
                "--out",
                str(out),
                "--data-dir",
                str(data),
                "--depth",
                "1",
                "--batch-size",
                "2",
                "--max-steps",
                "3",
                "--no-progress",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_bpc"] > 0 and metrics["validation_perplexity"] > 1
    assert (out / "tokenizer.json").exists()


@pytest.mark.slow
def test_torchrun_two_ranks_end_with_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--standalone",
        str(Path(__file__).with_name("ddp_worker.py")),
        "vit-fashion",
        "--out",
        str(out),
        "--data-dir",
        FASHION,
        "--depth",
        "1",
        "--batch-size",
        "16",
        "--max-steps",
        "3",
        "--no-progress",
        "--threads",
        "1",
    ]
    subprocess.run(cmd, check=True, timeout=300, capture_output=True)
    rank0, rank1 = (
        load_file(str(out / "rank0.safetensors")),
        load_file(str(out / "rank1.safetensors")),
    )
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    initial = load_checkpoint(out)[0].state_dict()  # rank 0's checkpoint is the trained weights
    assert torch.equal(initial["head.weight"], rank0["head.weight"])


def test_schedule_step_follows_the_wall_time_budget():
    assert schedule_step(10, 100, elapsed=5.0, time_limit=None, warmup=2) == 10
    assert schedule_step(10, 100, elapsed=5.0, time_limit=10.0, warmup=2) == 50
    assert schedule_step(90, 100, elapsed=1.0, time_limit=10.0, warmup=2) == 90
    assert schedule_step(10, 100, elapsed=99.0, time_limit=10.0, warmup=2) == 100
    assert schedule_step(1, 100, elapsed=9.0, time_limit=10.0, warmup=2) == 1  # warming up


def test_time_limit_stops_training_and_keep_best_keeps_the_best(tmp_path):
    out = tmp_path / "clf"
    assert (
        main(
            [
                "vit-fashion",
                "--out",
                str(out),
                "--data-dir",
                FASHION,
                "--depth",
                "1",
                "--batch-size",
                "32",
                "--no-progress",
                "--framing",
                "0.5",
                "--max-steps",
                "100000",
                "--time-limit",
                "1",
                "--eval-every",
                "2",
                "--keep-best",
                "top1",
            ]
        )
        == 0
    )
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((out / "metrics.json").read_text())
    assert final["step"] < 100000 and final["elapsed_s"] >= 1.0
    best = json.loads((out / "best" / "metrics.json").read_text())
    assert best["top1"] == max(e["top1"] for e in log)
    assert load_checkpoint(out / "best")[1].depth == 1


def test_is_best_knows_which_way_is_better():
    log = [{"top1": 0.5, "validation_bpc": 2.0}, {"top1": 0.4, "validation_bpc": 1.9}]
    assert is_best(log, "validation_bpc") and not is_best(log, "top1")


def test_segmenter_batches_enlarge_their_share_of_standard_scenes(tmp_path):
    from training.tasks.fashion import FashionScenesTask

    def batch(enlarged: float) -> tuple[torch.Tensor, torch.Tensor]:
        task = FashionScenesTask(FASHION, scenes_per_epoch=16, test_scenes=4, enlarged=enlarged)
        return next(task.batches(0, 8, 0, 1))

    (x0, y0), (x1, y1) = batch(0.0), batch(0.5)
    assert torch.equal(y0, y1) and torch.equal(x0[4:], x1[4:])  # masks and the rest unchanged
    assert not torch.equal(x0[:4], x1[:4])
    with pytest.raises(SystemExit, match="--enlarged applies to the segmenter"):
        main(["vit-fashion", "--out", str(tmp_path), "--data-dir", FASHION, "--enlarged", "0.5"])


def test_lm_document_starts_put_eos_before_a_line_start(tmp_path):
    data = make_kjv_dir(tmp_path)
    plain = next(KJVTask(str(data), block_size=16).batches(0, 8, 0, 1))
    task = KJVTask(str(data), block_size=16, doc_starts=0.5)
    x, y = next(task.batches(0, 8, 0, 1))
    eos, newline = task.tokenizer.token_to_id(kjv.EOS), task.encode("\n")[-1]
    assert (x[:4, 0] == eos).all() and not (y == eos).any()  # EOS is context, never a target
    assert torch.equal(x[4:], plain[0][4:]) and torch.equal(y[:4, :-1], x[:4, 1:])
    stream = task.train_ids.tolist()
    line_starts = {tuple(stream[i + 1 : i + 17]) for i, t in enumerate(stream) if t == newline}
    assert all(tuple(row) in line_starts for row in y[:4].tolist())
    with pytest.raises(SystemExit, match="--doc-starts applies to the language model"):
        main(
            [
                "vit-fashion",
                "--out",
                str(tmp_path / "v"),
                "--data-dir",
                FASHION,
                "--doc-starts",
                "1",
            ]
        )
