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
from models.checkpoint import SAMPLE_SIZE, DatasetFacts, Sample, save_checkpoint
from models.config import LMConfig, ModelConfig, SegmenterConfig
from training.data import fashion, kjv, scenes
from training.data.kjv import train_tokenizer

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


def facts_for(cfg: ModelConfig, description: str = "random weights") -> DatasetFacts:
    """The data facts the Fashion-MNIST, scenes or KJV task records, for a test checkpoint."""
    if isinstance(cfg, LMConfig):
        return DatasetFacts(description, eos_token=kjv.EOS)
    labels = scenes.SCENE_LABELS if isinstance(cfg, SegmenterConfig) else fashion.LABELS
    channels = [fashion.MEAN] * cfg.in_chans, [fashion.STD] * cfg.in_chans
    return DatasetFacts(description, list(labels), *channels)


def sample_for(cfg: ModelConfig) -> Sample | None:
    """The held-out sample the Fashion-MNIST or scenes task keeps, from the fixture's test split
    (None for language models)."""
    if isinstance(cfg, LMConfig):
        return None
    images, labels = fashion.load_split("test", ROOT / "tests/fixtures/fashion-mnist")
    if isinstance(cfg, SegmenterConfig):
        canvases, _ = scenes.make_scenes(SAMPLE_SIZE, images, labels, seed=10_000)
        return torch.from_numpy(fashion.normalize(canvases)), "16 Fashion-MNIST test scenes"
    inputs = torch.from_numpy(fashion.normalize(images[:SAMPLE_SIZE]))
    return inputs, "16 Fashion-MNIST test images"


def tiny_checkpoint(folder: Path, name: str) -> Path:
    torch.manual_seed(0)
    cfg = get_config(name, **TINY_MODELS[name])
    model = create_model(name, **TINY_MODELS[name])
    metrics = {"top1": 0.5, "command": "neutreno train (test)"}
    save_checkpoint(folder, model, cfg, facts_for(cfg), metrics, sample_for(cfg))
    if cfg.family == "lm":
        text = (ROOT / "tests/fixtures/kjv-sample.txt").read_text()
        train_tokenizer(text, vocab_size=TINY_MODELS[name]["vocab_size"]).save(
            str(folder / "tokenizer.json")
        )
    return folder
