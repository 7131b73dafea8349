"""Shared helpers of the export tests: tiny checkpoints and the Exported record."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from torch import nn

from export.bundle import Bundle
from models import create_model, get_config
from models.checkpoint import save_checkpoint
from models.config import ModelConfig
from models.data.kjv import train_tokenizer

ROOT = Path(__file__).resolve().parents[2]
TINY = {"depth": 2, "dim": 32, "heads": 2}
TINY_MODELS = {
    "vit-fashion": TINY,
    "segmenter-fashion": {
        **TINY,
        "decoder_depth": 2,
        "decoder_heads": 2,
        "window": 3,
        "refine_channels": 4,
    },
    "lm-kjv": {**TINY, "vocab_size": 300, "block_size": 64},
}


@dataclass
class Exported:
    """A torch model, its config, its ONNX graph and an ORT CPU session on it."""

    model: nn.Module
    cfg: ModelConfig
    proto: onnx.ModelProto
    sess: ort.InferenceSession
    bundle: Bundle | None = None


def tiny_checkpoint(folder: Path, name: str) -> Path:
    torch.manual_seed(0)
    cfg = get_config(name, **TINY_MODELS[name])
    model = create_model(name, **TINY_MODELS[name])
    metrics = {"top1": 0.5, "command": "neutreno train (test)", "data": "random weights"}
    save_checkpoint(folder, model, cfg, metrics=metrics)
    if cfg.family == "lm":
        text = (ROOT / "tests/fixtures/kjv-sample.txt").read_text()
        train_tokenizer(text, vocab_size=TINY_MODELS[name]["vocab_size"]).save(
            str(folder / "tokenizer.json")
        )
    return folder
