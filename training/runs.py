"""Training-run bookkeeping for `neutreno train`: the --out folder guard, the configuration of a
resumed run, the training data check, and the history of every run that built a checkpoint.

A checkpoint folder belongs to one training history. `neutreno train` never mixes two: an --out
that already holds a checkpoint is refused unless --resume continues it (its config.json is then
the configuration, so architecture flags are optional and conflicting ones are an error) or
--force starts it over. Each run (command, steps, wall time, --init source) is appended to the
history kept in train_state.pt and written to metrics.json, so the bundle manifest names all of
them, not only the last.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import typing
from pathlib import Path
from typing import Any

from models.checkpoint import CONFIG, METRICS, STATE, WEIGHTS, load_metrics
from models.config import ModelConfig, load_config
from neutreno.command import CommandError
from training.data import fashion
from training.tasks import PAPER_TASKS

LOG = "metrics.jsonl"
TOKENIZER = "tokenizer.json"
RUN_FILES = (WEIGHTS, CONFIG, STATE, METRICS, LOG, TOKENIZER)
KJV_FILES = (TOKENIZER, "train.txt", "validation.txt", "test.txt")


def guard_out(out: Path, resume: bool, force: bool) -> None:
    """Refuse to train into a folder holding a checkpoint unless resuming it or forced."""
    if resume and force:
        raise CommandError(
            "--resume continues the checkpoint in --out and --force deletes it; pass one of them"
        )
    if resume and not (out / STATE).is_file():
        raise CommandError(
            f"nothing to resume: {out / STATE} does not exist (git does not track it, so a "
            f"fresh clone has only the weights); start a new folder with --init {out} "
            "--out <new folder> to continue from its weights"
        )
    if not resume and not force and out.is_dir() and any(out.iterdir()):
        raise CommandError(
            f"--out {out} is not empty; train into a new folder, pass --resume "
            "to continue its run, or --force to delete its checkpoint and start "
            "over"
        )


def check_init(init: str | None) -> None:
    """--init names a checkpoint folder with weights."""
    if init and not (Path(init) / WEIGHTS).is_file():
        raise CommandError(
            f"--init {init}: no {WEIGHTS} there; pass a folder written by neutreno train"
        )


def clear_out(out: Path) -> list[str]:
    """--force: delete the files a previous run wrote in `out` (others are left); their names."""
    removed = [name for name in RUN_FILES if (out / name).is_file()]
    for name in removed:
        (out / name).unlink()
    return removed


def resumed_config(out: Path, model: str, overrides: dict[str, Any]) -> ModelConfig:
    """The checkpoint's config.json; an override that differs from it is an error."""
    cfg = load_config(out / CONFIG)
    if model != cfg.name:
        raise CommandError(f"--resume: {out} holds a {cfg.name} checkpoint, not {model}")
    conflicts = [
        f"{key}={value!r} (checkpoint: {getattr(cfg, key)!r})"
        for key, value in overrides.items()
        if getattr(cfg, key) != value
    ]
    if conflicts:
        raise CommandError(
            f"--resume: {', '.join(conflicts)} conflicts with {out / CONFIG}; "
            "drop the flag (the checkpoint's config is used)"
        )
    return cfg


def check_overrides(cfg: ModelConfig, overrides: dict[str, Any]) -> None:
    """Every override names a field of the variant's config and has the field's type."""
    fields = [f.name for f in dataclasses.fields(cfg)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise CommandError(
            f"--set {', '.join(unknown)}: {cfg.name} has no such field; valid "
            f"fields: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(type(cfg))
    for key, value in overrides.items():
        expected = _expected(hints[key], value)
        if expected:
            raise CommandError(f"--set {key}={value!r}: {key} must be {expected}")


def _expected(hint: Any, value: Any) -> str | None:
    """What `value` should be for a config field annotated `hint`; None when it fits."""
    if typing.get_origin(hint) is typing.Literal:
        choices = typing.get_args(hint)
        return None if value in choices else "one of " + ", ".join(map(repr, choices))
    kinds = (int, float) if hint is float else (hint,)
    fits = isinstance(value, kinds) and not isinstance(value, bool)
    return None if fits else f"of type {hint.__name__}"


def check_data(cfg: ModelConfig, data_dir: str | None) -> None:
    """The Fashion-MNIST / KJV files the product's tasks read exist (paper tasks: their own)."""
    if cfg.name in PAPER_TASKS:
        return
    if cfg.family == "lm":
        root = Path(data_dir or "data/kjv")
        files = [root / name for name in KJV_FILES]
    else:
        root = Path(data_dir) if data_dir else fashion.data_dir()
        files = [root / name for pair in fashion.FILES.values() for name in pair]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise CommandError(
            f"training data not found: {missing[0]}; run `make data` (needs root "
            "for apt-get) or pass --data-dir"
        )


def previous_runs(out: Path, state: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The history a resumed run extends: train_state.pt's, else the command in metrics.json."""
    if state is None:
        return []
    if "runs" in state:
        return list(state["runs"])
    metrics = load_metrics(out)  # a state written before runs were recorded
    if "command" not in metrics:
        return []
    return [{"command": metrics["command"], "wall_time_s": metrics.get("wall_time_s", 0.0)}]


def new_run(argv: list[str], step: int, init: str | None) -> dict[str, Any]:
    """This run's history entry; `to_step` and `wall_time_s` are updated as it trains."""
    run: dict[str, Any] = {
        "command": "neutreno train " + shlex.join(argv),
        "from_step": step,
        "to_step": step,
        "wall_time_s": 0.0,
    }
    if init:
        source = load_metrics(init)
        run["init"] = {
            "checkpoint": init,
            "commands": source.get("commands") or [c for c in [source.get("command")] if c],
        }
    return run


def history_facts(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """metrics.json fields: the last command, every command, total wall time, the runs."""
    return {
        "command": runs[-1]["command"],
        "commands": [r["command"] for r in runs],
        "wall_time_s": round(sum(r["wall_time_s"] for r in runs), 3),
        "runs": runs,
    }


def emit_json(results: Any, out: Path | None) -> None:
    """Print results as indented JSON, and write them to `out` when given (the output of the
    evaluation commands: training.robustness, training.lm_eval)."""
    text = json.dumps(results, indent=2)
    if out:
        out.write_text(text + "\n")
    print(text)
