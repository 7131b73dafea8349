"""Generation test helpers: a tiny random-init LM checkpoint exported to a real bundle.

The export (torch dynamo + ORT parity checks) takes tens of seconds on two cores, so the
checkpoint and bundle are cached in pytest's cache folder, keyed by the sources that shape them.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY_LM = {"depth": 2, "dim": 64, "heads": 4, "vocab_size": 512, "block_size": 256}
NAME = "tiny-lm"
SOURCES = [
    "models/lm.py",
    "models/layers.py",
    "models/attention.py",
    "models/config.py",
    "training/data/kjv.py",
    "export/graphs.py",
    "export/ops.py",
    "export/opdef.py",
    "export/bundle.py",
    "export/cli.py",
    "tests/support/generation_helpers.py",
]


def _key() -> str:
    digest = hashlib.sha256()
    for rel in SOURCES:
        digest.update((ROOT / rel).read_bytes())
    return digest.hexdigest()[:16]


def _build(folder: Path) -> None:
    import torch

    from export.cli import export_checkpoint
    from models import create_model, get_config
    from models.checkpoint import save_checkpoint
    from support.export_helpers import facts_for
    from training.data.kjv import train_tokenizer

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.manual_seed(0)
    ckpt = folder / "checkpoint"
    cfg = get_config("lm-kjv", **TINY_LM)
    save_checkpoint(
        ckpt,
        create_model("lm-kjv", **TINY_LM),
        cfg,
        facts_for(cfg, "random weights (test)"),
        metrics={"command": "test fixture"},
    )
    text = (ROOT / "tests/fixtures/kjv-sample.txt").read_text()
    train_tokenizer(text, vocab_size=TINY_LM["vocab_size"]).save(str(ckpt / "tokenizer.json"))
    export_checkpoint(ckpt, folder / "bundle" / NAME / "1")


def tiny_lm(config: pytest.Config, scratch: Path) -> Path:
    """Folder with `checkpoint/` (torch) and `bundle/tiny-lm/1/` (ONNX), built once (in
    pytest's cache, or in `scratch` when the cache plugin is off)."""
    cache = getattr(config, "cache", None)
    folder = cache.mkdir(f"tiny-lm-{_key()}") if cache else scratch / f"tiny-lm-{_key()}"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "bundle" / NAME / "1" / "manifest.json").is_file():
        shutil.rmtree(folder)
        folder.mkdir()
        _build(folder)
    return folder


def add_lm(repo: Path, built: Path) -> Path:
    """Copy the tiny LM bundle into a model repository."""
    shutil.copytree(built / "bundle" / NAME, repo / NAME)
    return repo
