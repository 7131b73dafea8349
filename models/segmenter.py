"""Segmenter (Strudel et al., ICCV 2021): ViT encoder + mask-transformer decoder, NeuTRENO in
both."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import SegmenterConfig, ViTConfig
from models.diagnostics import layer_similarity
from models.layers import Block, StackOutput, run_blocks
from models.vit import ViT, init_weights


class MaskTransformer(nn.Module):
    """Joint attention over patch tokens and one learned embedding per class.

    Masks are the scalar products of L2-normalised patch and class embeddings, (B, N, n_cls).
    The decoder is its own NeuTRENO stack: its first layer's values are its v0.
    """

    def __init__(self, cfg: SegmenterConfig) -> None:
        super().__init__()
        self.n_cls = cfg.num_classes
        self.proj_dec = nn.Linear(cfg.dim, cfg.dim)
        self.cls_emb = nn.Parameter(torch.zeros(1, cfg.num_classes, cfg.dim))
        self.blocks = nn.ModuleList(
            Block(
                cfg.dim,
                cfg.decoder_heads,
                cfg.mlp_ratio,
                lam=cfg.fidelity_lam,
                causal=False,
                dropout=cfg.dropout,
            )
            for _ in range(cfg.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.proj_patch = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.proj_classes = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.mask_norm = nn.LayerNorm(cfg.num_classes, eps=1e-6)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.cls_emb, std=0.02)

    def forward(self, patches: Tensor) -> tuple[Tensor, StackOutput]:
        """patches (B, N, dim) -> (patch-level masks (B, N, n_cls), decoder stack output)."""
        x = self.proj_dec(patches)
        x = torch.cat([x, self.cls_emb.expand(x.shape[0], -1, -1)], dim=1)  # (B, N + n_cls, dim)
        out = run_blocks(self.blocks, x)
        x = self.decoder_norm(out.x)
        n = patches.shape[1]
        p = F.normalize(self.proj_patch(x[:, :n]), dim=-1)
        c = F.normalize(self.proj_classes(x[:, n:]), dim=-1)
        return self.mask_norm(p @ c.transpose(1, 2)), out


class PixelRefiner(nn.Module):
    """Residual pixel-level correction of upsampled masks, conditioned on the input image.

    (B, n_cls, H, W) masks and (B, C, H, W) image -> (B, n_cls, H, W) masks + conv(conv([m, x])).
    The last conv starts at zero, so a new refiner leaves a trained model's output unchanged.
    """

    def __init__(self, n_cls: int, in_chans: int, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(n_cls + in_chans, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, n_cls, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        assert self.conv2.bias is not None  # a Conv2d made with its bias (the default)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, masks: Tensor, image: Tensor) -> Tensor:
        return masks + self.conv2(F.gelu(self.conv1(torch.cat([masks, image], dim=1))))


class Segmenter(nn.Module):
    """images (B, C, H, W) -> per-pixel class logits (B, n_cls, H, W)."""

    def __init__(self, cfg: SegmenterConfig) -> None:
        super().__init__()
        self.cfg = cfg
        encoder_cfg = ViTConfig(
            **{k: v for k, v in vars(cfg).items() if k in ViTConfig.__dataclass_fields__}
        )
        encoder_cfg.num_classes = 0
        self.encoder = ViT(encoder_cfg)
        self.decoder = MaskTransformer(cfg)
        self.refiner = (
            PixelRefiner(cfg.num_classes, cfg.in_chans, cfg.refine_channels)
            if cfg.refine_channels
            else None
        )

    def forward_features(self, x: Tensor) -> StackOutput:
        """Encoder tokens (B, 1 + N, dim) and the encoder's per-layer hidden states."""
        return self.encoder.forward_features(x)

    def forward_head(self, tokens: Tensor, x: Tensor) -> tuple[Tensor, StackOutput]:
        """Encoder tokens (B, 1 + N, dim) and images (B, C, H, W) -> (logits (B, n_cls, H, W),
        decoder stack output)."""
        g = self.cfg.grid
        masks, dec = self.decoder(tokens[:, 1:])  # drop the cls token
        masks = masks.transpose(1, 2).reshape(tokens.shape[0], self.cfg.num_classes, g, g)
        masks = F.interpolate(masks, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.refiner is not None:
            masks = self.refiner(masks, x)
        return masks, dec

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x).x, x)[0]

    def forward_with_similarity(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits (B, n_cls, H, W) and per-layer token similarity (B, enc depth + dec depth)."""
        enc = self.forward_features(x)
        logits, dec = self.forward_head(enc.x, x)
        return logits, layer_similarity(enc.hidden + dec.hidden)
