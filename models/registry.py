"""Named model variants and `create_model(name, **overrides)`."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from models.config import LMConfig, ModelConfig, SegmenterConfig, ViTConfig
from models.lm import CausalLM
from models.segmenter import Segmenter
from models.vit import ViT

VARIANTS: dict[str, ModelConfig] = {
    # Fashion-MNIST classifier: 28x28 grey, patch 4 -> 49 patches + cls.
    "vit-fashion": ViTConfig(
        name="vit-fashion",
        img_size=28,
        patch_size=4,
        in_chans=1,
        num_classes=10,
        dim=64,
        depth=12,
        heads=4,
        mlp_ratio=2.0,
        lam=0.6,
    ),
    # DeiT-Tiny at ImageNet scale, as in the paper.
    "deit-tiny": ViTConfig(
        name="deit-tiny",
        img_size=224,
        patch_size=16,
        in_chans=3,
        num_classes=1000,
        dim=192,
        depth=12,
        heads=3,
        mlp_ratio=4.0,
        lam=0.6,
    ),
    # Composite Fashion-MNIST scenes: 64x64 grey, background + 10 item classes.
    "segmenter-fashion": SegmenterConfig(
        name="segmenter-fashion",
        img_size=64,
        patch_size=4,
        in_chans=1,
        num_classes=11,
        dim=64,
        depth=6,
        heads=4,
        mlp_ratio=2.0,
        lam=0.6,
        decoder_depth=2,
        decoder_heads=4,
    ),
    # Segmenter-Tiny on ADE20K (512x512, 150 classes), as in the paper.
    "segmenter-tiny-ade20k": SegmenterConfig(
        name="segmenter-tiny-ade20k",
        img_size=512,
        patch_size=16,
        in_chans=3,
        num_classes=150,
        dim=192,
        depth=12,
        heads=3,
        mlp_ratio=4.0,
        lam=0.6,
        decoder_depth=2,
        decoder_heads=3,
    ),
    # King James Bible LM over a 4096-token BPE vocabulary.
    "lm-kjv": LMConfig(
        name="lm-kjv",
        vocab_size=4096,
        block_size=256,
        dim=192,
        depth=6,
        heads=6,
        mlp_ratio=4.0,
        lam=0.4,
    ),
    # The paper's WikiText-103 small model: 16 layers, d_model 128, 8 heads.
    "lm-wt103-small": LMConfig(
        name="lm-wt103-small",
        vocab_size=32768,
        block_size=256,
        dim=128,
        depth=16,
        heads=8,
        mlp_ratio=4.0,
        lam=0.4,
    ),
}

FAMILIES: dict[str, type[nn.Module]] = {"vit": ViT, "segmenter": Segmenter, "lm": CausalLM}


def list_models() -> list[str]:
    return sorted(VARIANTS)


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """The named variant's config with fields replaced by `overrides` (unknown fields raise; the
    values are not checked against the fields' types, hence Any)."""
    if name not in VARIANTS:
        raise KeyError(f"unknown model {name!r}; choose from {list_models()}")
    return dataclasses.replace(VARIANTS[name], **overrides)


def build_model(cfg: ModelConfig) -> nn.Module:
    """Instantiate the model class for a config."""
    return FAMILIES[cfg.family](cfg)


def create_model(name: str, **overrides: object) -> nn.Module:
    """Build a registered variant, e.g. create_model("vit-fashion", attention="softmax")."""
    return build_model(get_config(name, **overrides))
