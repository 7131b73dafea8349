"""GPT-style causal language model with NeuTRENO attention and an incremental (KV-cache) forward."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.attention import KVCache
from models.config import LMConfig
from models.diagnostics import layer_similarity
from models.layers import Block, run_blocks
from models.vit import init_weights


@dataclass
class LMOutput:
    """logits (B, T, vocab); presents[i] = (k, v), each (B, H, P + T, D); hidden per layer."""

    logits: Tensor
    presents: list[KVCache]
    hidden: list[Tensor]


def padding_mask(attention_mask: Tensor, q_len: int) -> Tensor:
    """(B, P + T) 0/1 mask of real tokens -> (B, 1, T, P + T) bool, True = may attend.

    Keys that are padding are hidden. Each query may always see itself, so a padded query row
    is never fully masked (its output is ignored, but it must stay finite). Causality is applied
    separately by the attention.
    """
    k_len = attention_mask.shape[-1]
    rows = torch.arange(q_len, device=attention_mask.device).unsqueeze(1) + (k_len - q_len)
    self_pos = torch.arange(k_len, device=attention_mask.device).unsqueeze(0) == rows  # (T, P+T)
    keys = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, P + T)
    return keys | self_pos


class CausalLM(nn.Module):
    """token ids (B, T) -> next-token logits (B, T, vocab); tied input/output embeddings."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(
                cfg.dim,
                cfg.heads,
                cfg.mlp_ratio,
                lam=cfg.fidelity_lam,
                causal=True,
                dropout=cfg.dropout,
            )
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.apply(init_weights)
        self.head.weight = self.tok_emb.weight

    def forward(
        self,
        idx: Tensor,
        attention_mask: Tensor | None = None,
        past: list[KVCache] | None = None,
    ) -> LMOutput:
        """idx (B, T); attention_mask (B, P + T) 0/1 over past and current tokens (left padding
        allowed); past: per-layer (k, v) of P earlier tokens. Positions count real tokens only."""
        t = idx.shape[1]
        p = 0 if past is None else past[0][0].shape[2]
        if attention_mask is None:
            pos = torch.arange(p, p + t, device=idx.device).unsqueeze(0)
            mask = None
        else:
            pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -t:]
            mask = padding_mask(attention_mask, t)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        out = run_blocks(self.blocks, x, mask=mask, past=past)
        return LMOutput(self.head(self.norm(out.x)), out.presents, out.hidden)

    def forward_features(self, idx: Tensor) -> LMOutput:
        """Same as forward; named like the vision models so diagnostics can call any model."""
        return self.forward(idx)

    @torch.no_grad()
    def greedy(self, idx: Tensor, max_new_tokens: int) -> Tensor:
        """Greedy decoding with the KV cache: idx (1, T) -> (1, T + max_new_tokens)."""
        out = self.forward(idx)
        tokens = [idx]
        for _ in range(max_new_tokens):
            nxt = out.logits[:, -1:].argmax(-1)
            tokens.append(nxt)
            out = self.forward(nxt, past=out.presents)
        return torch.cat(tokens, dim=1)

    def similarity(self, out: LMOutput, attention_mask: Tensor | None) -> Tensor:
        """Per-layer token similarity (B, depth) of the current tokens, padding excluded."""
        t = out.logits.shape[1]
        weights = None if attention_mask is None else attention_mask[:, -t:]
        return layer_similarity(out.hidden, weights)
