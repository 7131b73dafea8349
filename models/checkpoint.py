"""Checkpoints: safetensors weights + the model's config JSON, side by side in one folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models.config import ModelConfig, config_from_dict
from models.registry import build_model

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "train_state.pt"
METRICS = "metrics.json"


def save_checkpoint(folder: str | Path, model: nn.Module, cfg: ModelConfig,
                    metrics: dict[str, Any] | None = None) -> Path:
    """Write weights (tied tensors stored once) and config; metrics.json when given."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if "head.weight" in state and "tok_emb.weight" in state:
        del state["head.weight"]  # tied to the token embedding
    save_file(state, str(folder / WEIGHTS), metadata={"config": json.dumps(cfg.to_dict())})
    cfg.save(folder / CONFIG)
    if metrics is not None:
        (folder / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    return folder


def load_checkpoint(folder: str | Path, map_location: str = "cpu") -> tuple[nn.Module, ModelConfig]:
    """Rebuild the model from config.json and load its weights (strict)."""
    folder = Path(folder)
    cfg = config_from_dict(json.loads((folder / CONFIG).read_text()))
    model = build_model(cfg)
    state = load_file(str(folder / WEIGHTS), device=map_location)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "head.weight" or "tok_emb.weight" not in state]
    if missing or unexpected:
        raise ValueError(f"checkpoint {folder} does not match its config: missing={missing} "
                         f"unexpected={unexpected}")
    return model.eval(), cfg


def load_metrics(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / METRICS
    return json.loads(path.read_text()) if path.exists() else {}


def torch_load_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)
