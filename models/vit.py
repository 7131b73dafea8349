"""DeiT-style Vision Transformer classifier with NeuTRENO attention."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.config import ViTConfig
from models.diagnostics import layer_similarity
from models.layers import Block, StackOutput, run_blocks


def init_weights(module: nn.Module) -> None:
    """Truncated-normal(0.02) linears and embeddings, zero biases, unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def patch_embedding(cfg: ViTConfig) -> nn.Module:
    """(B, C, H, W) -> (B, dim, H / patch, W / patch): linear patches or a conv stem."""
    if cfg.stem == "patch":
        return nn.Conv2d(cfg.in_chans, cfg.dim, cfg.patch_size, stride=cfg.patch_size)
    if cfg.stem != "conv":
        raise ValueError(f"stem must be 'patch' or 'conv', got {cfg.stem!r}")
    n = cfg.patch_size.bit_length() - 1
    if cfg.patch_size != 2**n or n == 0:
        raise ValueError(f"a conv stem needs a power-of-two patch_size > 1, got {cfg.patch_size}")
    layers: list[nn.Module] = []
    channels = cfg.in_chans
    for _ in range(n):  # each 3x3 stride-2 conv halves the grid
        layers += [nn.Conv2d(channels, cfg.dim // 2, 3, stride=2, padding=1), nn.GELU()]
        channels = cfg.dim // 2
    return nn.Sequential(*layers, nn.Conv2d(channels, cfg.dim, 1))


def window_mask(grid: int, radius: int) -> Tensor:
    """(1 + N, 1 + N) bool, True = may attend: patches see patches within `radius` grid steps
    (Chebyshev distance) and the cls token (index 0); the cls token sees every token."""
    idx = torch.arange(grid * grid)
    rows, cols = idx // grid, idx % grid  # (N,) each
    near = ((rows[:, None] - rows).abs() <= radius) & ((cols[:, None] - cols).abs() <= radius)
    mask = torch.ones(1 + grid * grid, 1 + grid * grid, dtype=torch.bool)
    mask[1:, 1:] = near
    return mask


class ViT(nn.Module):
    """images (B, C, H, W) -> logits (B, num_classes); cls token + patch tokens."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        if cfg.img_size % cfg.patch_size:
            raise ValueError(
                f"img_size {cfg.img_size} not divisible by patch_size {cfg.patch_size}"
            )
        self.cfg = cfg
        self.patch_embed = patch_embedding(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.grid**2, cfg.dim))
        self.blocks = nn.ModuleList(
            Block(
                cfg.dim,
                cfg.heads,
                cfg.mlp_ratio,
                lam=cfg.fidelity_lam,
                causal=False,
                dropout=cfg.dropout,
            )
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.head = nn.Linear(cfg.dim, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.attn_mask: Tensor | None
        self.register_buffer(
            "attn_mask", window_mask(cfg.grid, cfg.window) if cfg.window else None, persistent=False
        )
        self.apply(init_weights)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward_features(self, x: Tensor) -> StackOutput:
        """(B, C, H, W) -> tokens (B, 1 + N, dim) after the final norm, plus per-layer hidden."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        out = run_blocks(self.blocks, x, mask=self.attn_mask)
        out.x = self.norm(out.x)
        return out

    def forward_head(self, x: Tensor) -> Tensor:
        """(B, 1 + N, dim) -> (B, num_classes) from the cls token."""
        return self.head(x[:, 0])

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x).x)

    def forward_with_similarity(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits (B, classes) and per-layer token similarity (B, depth), for serving telemetry."""
        out = self.forward_features(x)
        return self.forward_head(out.x), layer_similarity(out.hidden)
