"""Checkpoints: safetensors weights, the model's config JSON, the facts of its training data and
a few held-out inputs, side by side in one folder."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from models.config import ModelConfig, config_from_dict
from models.registry import build_model

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "train_state.pt"
METRICS = "metrics.json"
DATA = "data.json"
SAMPLE = "sample.safetensors"
SAMPLE_SIZE = 16  # held-out inputs a checkpoint keeps for export's parity check on real data
Sample = tuple[torch.Tensor, str]  # (inputs (B, C, H, W) float32 as the model sees them, words)


@dataclass(frozen=True)
class DatasetFacts:
    """What a model's training data says about its inputs and outputs. The training task states
    it and the checkpoint keeps it (data.json), so export copies it into the bundle's manifest
    instead of guessing from the model's shape.

    description: the data and the evaluation, in words (the manifest's training.data).
    labels: class names in output index order; [] for language models.
    mean, std: per input channel, on the 0-1 pixel scale; [] for language models.
    eos_token: the tokenizer's end-of-text token for language models, else None.
    """

    description: str
    labels: list[str] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    eos_token: str | None = None

    def save(self, folder: Path) -> None:
        (folder / DATA).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> DatasetFacts:
        """The facts `save` wrote; FileNotFoundError when the folder has none."""
        return cls(**json.loads((Path(folder) / DATA).read_text()))


def save_checkpoint(
    folder: str | Path,
    model: nn.Module,
    cfg: ModelConfig,
    facts: DatasetFacts,
    metrics: dict[str, Any] | None = None,
    sample: Sample | None = None,
) -> Path:
    """Write weights (tied tensors stored once), config and data facts; metrics.json and the
    held-out sample when given."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if "head.weight" in state and "tok_emb.weight" in state:
        del state["head.weight"]  # tied to the token embedding
    save_file(state, str(folder / WEIGHTS), metadata={"config": json.dumps(cfg.to_dict())})
    cfg.save(folder / CONFIG)
    facts.save(folder)
    if sample is not None:
        inputs, description = sample
        save_file(
            {"inputs": inputs.detach().cpu().contiguous()},
            str(folder / SAMPLE),
            metadata={"description": description},
        )
    if metrics is not None:
        (folder / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    return folder


def load_sample(folder: str | Path) -> Sample | None:
    """The held-out inputs save_checkpoint kept, None when the checkpoint has none (language
    models check on prompts instead; some datasets keep none)."""
    path = Path(folder) / SAMPLE
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("inputs"), f.metadata()["description"]


def load_checkpoint(folder: str | Path, map_location: str = "cpu") -> tuple[nn.Module, ModelConfig]:
    """Rebuild the model from config.json and load its weights (strict)."""
    folder = Path(folder)
    cfg = config_from_dict(json.loads((folder / CONFIG).read_text()))
    model = build_model(cfg)
    state = load_file(str(folder / WEIGHTS), device=map_location)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "head.weight" or "tok_emb.weight" not in state]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {folder} does not match its config: missing={missing} "
            f"unexpected={unexpected}"
        )
    return model.eval(), cfg


def init_from(model: nn.Module, folder: str | Path) -> list[str]:
    """Copy a checkpoint's weights into ``model`` wherever names match; returns the copied names.

    A ViT classifier initialises a Segmenter's encoder (Segmenter starts from a pretrained ViT):
    source names are also tried under ``encoder.``; the classifier head is skipped; a position
    embedding of another grid (1 + g*g, dim) is resized bilinearly to the target grid. Raises
    when no tensor matches or a matching name has an incompatible shape.
    """
    source = load_file(str(Path(folder) / WEIGHTS))
    aliases = {**source, **{f"encoder.{k}": v for k, v in source.items()}}
    target = model.state_dict()
    copied = {}
    for name, tensor in target.items():
        if name not in aliases or name.endswith(("head.weight", "head.bias")):
            continue
        value = aliases[name]
        if name.endswith("pos_embed") and value.shape != tensor.shape:
            value = resize_pos_embed(value, tensor.shape[1])
        if value.shape != tensor.shape:
            raise ValueError(
                f"{folder}: {name} is {tuple(value.shape)}, the model needs {tuple(tensor.shape)}"
            )
        copied[name] = value
    if not copied:
        raise ValueError(f"{folder}: no weight name matches the model")
    model.load_state_dict(copied, strict=False)
    return sorted(copied)


def resize_pos_embed(pos: torch.Tensor, tokens: int) -> torch.Tensor:
    """(1, 1 + g*g, dim) -> (1, tokens, dim): the cls slot kept, the patch grid resized."""
    old, new = math.isqrt(pos.shape[1] - 1), math.isqrt(tokens - 1)
    if old * old != pos.shape[1] - 1 or new * new != tokens - 1:
        raise ValueError(
            f"position embeddings of {pos.shape[1]} and {tokens} tokens are not cls + a square grid"
        )
    grid = pos[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)  # (1, dim, g, g)
    grid = F.interpolate(grid, size=(new, new), mode="bilinear", align_corners=False)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, new * new, -1)], dim=1)


def load_metrics(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / METRICS
    return json.loads(path.read_text()) if path.exists() else {}


def torch_load_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)
