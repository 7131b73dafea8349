"""Dataclass configs, one per model family, saved next to the weights and in bundle manifests."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from models.attention import AttentionKind, effective_lam


@dataclass
class ModelConfig:
    """Fields every model shares. `family` names the class that builds it."""

    family: ClassVar[str] = ""
    name: str = ""
    dim: int = 64
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 2.0
    attention: AttentionKind = "neutreno"
    lam: float = 0.6
    dropout: float = 0.0

    @property
    def fidelity_lam(self) -> float:
        """lam as the attention really uses it (0 for the softmax baseline)."""
        return effective_lam(self.attention, self.lam)

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, **dataclasses.asdict(self)}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


@dataclass
class ViTConfig(ModelConfig):
    """DeiT-style classifier: patch embedding, cls token, pre-LN blocks, linear head."""

    family: ClassVar[str] = "vit"
    img_size: int = 28
    patch_size: int = 4
    in_chans: int = 1
    num_classes: int = 10
    # "patch": DeiT's linear patch embedding; "conv": a convolutional stem with the same token
    # grid (log2(patch_size) stride-2 3x3 convs, Xiao et al. 2021), which converges much faster.
    stem: Literal["patch", "conv"] = "patch"
    # 0: global attention. r > 0: a patch token attends only to patches within r grid steps
    # (Chebyshev distance) and to the cls token, which still attends to all: a locality prior
    # that keeps separate objects in one image from mixing in the early layers.
    window: int = 0

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size


@dataclass
class SegmenterConfig(ViTConfig):
    """Segmenter (Strudel et al. 2021): ViT encoder + mask-transformer decoder."""

    family: ClassVar[str] = "segmenter"
    decoder_depth: int = 2
    decoder_heads: int = 4
    # 0: upsample the patch-level masks bilinearly (the paper). N > 0: then refine them at pixel
    # resolution with two 3x3 convs (N hidden channels) over [upsampled masks, input image], which
    # recovers item borders finer than a patch.
    refine_channels: int = 0


@dataclass
class LMConfig(ModelConfig):
    """GPT-style pre-LN causal decoder with tied embeddings."""

    family: ClassVar[str] = "lm"
    vocab_size: int = 4096
    block_size: int = 256
    lam: float = 0.4


CONFIG_CLASSES: dict[str, type[ModelConfig]] = {
    c.family: c for c in (ViTConfig, SegmenterConfig, LMConfig)
}


def config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Inverse of ModelConfig.to_dict; unknown fields are an error, not silently dropped."""
    data = dict(data)
    family = data.pop("family", None)
    if family not in CONFIG_CLASSES:
        raise ValueError(
            f"unknown model family {family!r}; expected one of {sorted(CONFIG_CLASSES)}"
        )
    cls = CONFIG_CLASSES[family]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {family} config fields: {sorted(unknown)}")
    return cls(**data)


def load_config(path: str | Path) -> ModelConfig:
    return config_from_dict(json.loads(Path(path).read_text()))
