"""`neutreno train` never overwrites a checkpoint silently, resumes with the checkpoint's own
config, reports user mistakes as one line with the fix (exit 2), and records the whole history.

Runs go through `neutreno.cli.main`, the console script's entry point, on the committed
Fashion-MNIST fixture (64 test images) with a one-layer ViT and a couple of steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.checkpoint import STATE, DatasetFacts, load_checkpoint, load_sample
from neutreno.cli import main

FASHION = str(Path(__file__).parents[1] / "fixtures" / "fashion-mnist")
COMMON = ["--data-dir", FASHION, "--batch-size", "32", "--no-progress", "--seed", "1"]


def train(out: Path, *extra: str) -> int:
    return main(["train", "vit-fashion", "--out", str(out), *COMMON, *extra])


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The command's stderr, which must be exactly one line."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("neutreno train: "), err
    return err


@pytest.fixture()
def trained(tmp_path: Path) -> Path:
    """A 2-step depth-1 checkpoint (with train_state.pt) in tmp_path/clf."""
    out = tmp_path / "clf"
    assert train(out, "--depth", "1", "--set", "stem=conv", "--max-steps", "2") == 0
    return out


def test_non_empty_out_is_refused_and_left_untouched(trained: Path, capsys) -> None:
    before = {p.name: p.read_bytes() for p in trained.iterdir()}
    capsys.readouterr()
    assert train(trained, "--depth", "1", "--max-steps", "2") == 2
    err = one_line_error(capsys)
    assert "not empty" in err and "--resume" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in trained.iterdir()} == before


def test_force_starts_over_without_mixing_runs(trained: Path) -> None:
    assert train(trained, "--depth", "2", "--max-steps", "1", "--force") == 0
    lines = (trained / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1]
    metrics = json.loads((trained / "metrics.json").read_text())
    assert len(metrics["commands"]) == 1 and "--force" in metrics["command"]
    assert load_checkpoint(trained)[1].depth == 2


def test_resume_restores_the_architecture_and_keeps_the_history(trained: Path) -> None:
    first = json.loads((trained / "metrics.json").read_text())
    assert train(trained, "--max-steps", "3", "--resume") == 0  # no --depth, no --set stem
    _, cfg = load_checkpoint(trained)
    assert cfg.depth == 1 and cfg.stem == "conv"
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["commands"][0] == first["command"] and "--resume" in metrics["commands"][1]
    assert [(r["from_step"], r["to_step"]) for r in metrics["runs"]] == [(0, 2), (2, 3)]
    assert metrics["wall_time_s"] == pytest.approx(
        sum(r["wall_time_s"] for r in metrics["runs"]), abs=0.11
    )
    assert metrics["wall_time_s"] >= first["wall_time_s"]
    steps = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [2, 3] and steps[1]["elapsed_s"] >= steps[0]["elapsed_s"]


def test_resume_with_a_conflicting_flag_is_one_line(trained: Path, capsys) -> None:
    capsys.readouterr()
    assert train(trained, "--max-steps", "3", "--resume", "--depth", "2") == 2
    err = one_line_error(capsys)
    assert "depth=2" in err and "checkpoint: 1" in err


def test_resume_without_train_state_says_so(trained: Path, capsys) -> None:
    (trained / STATE).unlink()
    capsys.readouterr()
    assert train(trained, "--max-steps", "3", "--resume") == 2
    err = one_line_error(capsys)
    assert "nothing to resume" in err and "--init" in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "vit-fahion", "--out", "x"], ["invalid choice", "vit-fashion", "lm-kjv"]),
        (
            ["train", "vit-fashion", "--out", "{tmp}", "--set", "stm=conv"],
            ["stm", "valid fields", "stem", "depth"],
        ),
        (
            ["train", "vit-fashion", "--out", "{tmp}", "--data-dir", "{tmp}/none"],
            ["{tmp}/none/", "make data", "needs root"],
        ),
        (
            ["train", "lm-kjv", "--out", "{tmp}/lm", "--data-dir", "{tmp}"],
            ["{tmp}/tokenizer.json", "make data"],
        ),
        (["train", "vit-fashion"], ["--out", "required"]),
        (
            ["train", "vit-fashion", "--out", "{tmp}", "--set", "depth=abc"],
            ["--set depth='abc': depth must be of type int"],
        ),
        (
            ["train", "vit-fashion", "--out", "{tmp}", "--set", "stem=foo"],
            ["stem must be one of 'patch', 'conv'"],
        ),
        (["train", "deit-tiny", "--out", "{tmp}"], ["needs --data-dir", "PAPER_SCALE.md"]),
        (
            ["train", "vit-fashion", "--out", "{tmp}", "--init", "{tmp}/missing"],
            ["--init {tmp}/missing", "model.safetensors"],
        ),
    ],
)
def test_mistakes_are_one_line_with_the_fix(
    tmp_path: Path, capsys, argv: list[str], expected: list[str]
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path / "new")) for a in argv]
    assert main(argv) == 2
    err = one_line_error(capsys)
    for text in expected:
        assert text.replace("{tmp}", str(tmp_path / "new")) in err, err


def test_eval_limit_is_what_the_metrics_describe(tmp_path: Path) -> None:
    out = tmp_path / "limited"
    assert train(out, "--depth", "1", "--max-steps", "1", "--eval-limit", "20") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_images"] == 20
    data = DatasetFacts.load(out).description
    assert "first 20 images" in data and "10k" not in data.split("top-1")[1]


def test_init_records_the_source_checkpoint_history(trained: Path, tmp_path: Path) -> None:
    source = json.loads((trained / "metrics.json").read_text())
    out = tmp_path / "from-init"
    assert (
        train(out, "--depth", "1", "--set", "stem=conv", "--max-steps", "1", "--init", str(trained))
        == 0
    )
    run = json.loads((out / "metrics.json").read_text())["runs"][0]
    assert run["init"] == {"checkpoint": str(trained), "commands": source["commands"]}


def test_the_checkpoint_keeps_the_task_data_facts_and_a_held_out_sample(trained: Path) -> None:
    facts = DatasetFacts.load(trained)
    assert facts.labels[:2] == ["T-shirt/top", "Trouser"] and len(facts.labels) == 10
    assert (facts.mean, facts.std, facts.eos_token) == ([0.286], [0.353], None)
    assert facts.description == "Fashion-MNIST train (60k), top-1 on test (first 64 images)"
    inputs, words = load_sample(trained)
    assert inputs.shape == (16, 1, 28, 28) and words == "16 Fashion-MNIST test images"
    assert inputs.mean().abs() < 1.0  # normalised as in training, not 0-255 pixels
