"""NeuTRENO fidelity attention: the one place where the attention math lives.

NeuTRENO (Nguyen et al., NeurIPS 2023) adds a fidelity term to softmax attention so that token
representations stop collapsing with depth:

    out = softmax(q k^T / sqrt(d) [+ causal mask]) v  +  lam * (v0 - v)

where v0 is the FIRST layer's value tensor at the same token positions. lam = 0 (or v0 = None) is
exactly softmax attention, the baseline.

Training, export and diagnostics all call `fidelity_attention` (or `attention_core`, which adds
the KV cache). The export package swaps `Attention.core` for a custom op with the same signature.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AttentionKind = Literal["neutreno", "softmax"]
KVCache = tuple[Tensor, Tensor]


def causal_mask(q_len: int, k_len: int, device: torch.device | None = None) -> Tensor:
    """Bottom-right aligned causal mask, (q_len, k_len) bool, True = may attend.

    Query i sits at absolute position k_len - q_len + i, so with a KV cache of k_len - q_len
    past tokens the new queries see all of the past and the current tokens up to themselves.
    """
    offset = k_len - q_len
    rows = torch.arange(q_len, device=device).unsqueeze(1) + offset
    cols = torch.arange(k_len, device=device).unsqueeze(0)
    return cols <= rows


def fidelity_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    v0: Tensor | None = None,
    *,
    lam: float = 0.0,
    causal: bool = False,
    mask: Tensor | None = None,
    fused: bool = True,
) -> Tensor:
    """softmax(q k^T / sqrt(d) [+ causal] [+ mask]) v + lam * (v0 - v_cur).

    Args:
        q: (B, H, Tq, D) queries.
        k, v: (B, H, Tk, D) keys and values, Tk >= Tq; the last Tq positions are the current
            tokens (the first Tk - Tq come from a KV cache).
        v0: (B, H, Tq, D) first layer's values for the current tokens, or None (no fidelity term).
        lam: fidelity weight; 0 gives plain softmax attention.
        causal: bottom-right aligned causal masking (see `causal_mask`).
        mask: optional bool mask broadcastable to (B, H, Tq, Tk), True = may attend.
        fused: use torch's scaled_dot_product_attention; False runs the explicit math, which is
            the export-safe path and the float64 reference.
    Returns:
        (B, H, Tq, D).
    """
    q_len, k_len = q.shape[-2], k.shape[-2]
    is_causal = fused and causal and mask is None and q_len == k_len  # SDPA's fast causal path
    if causal and not is_causal:
        c = causal_mask(q_len, k_len, q.device)
        mask = c if mask is None else mask & c
    if fused:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
    else:
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v
    if v0 is not None and lam != 0.0:
        out = out + lam * (v0 - v[..., k_len - q_len :, :])
    return out


def attention_core(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    v0: Tensor | None,
    *,
    lam: float,
    causal: bool,
    mask: Tensor | None = None,
    past: KVCache | None = None,
    fused: bool = True,
) -> tuple[Tensor, KVCache]:
    """Attention over past + current tokens; returns (out (B, H, Tq, D), present (k, v)).

    `present` holds the keys and values of past and current tokens, (B, H, Tp + Tq, D), for the
    next decoding step. The fidelity term only needs the current tokens' v and v0, so v0 is never
    cached.
    """
    if past is not None:
        k = torch.cat([past[0], k], dim=2)
        v = torch.cat([past[1], v], dim=2)
    out = fidelity_attention(q, k, v, v0, lam=lam, causal=causal, mask=mask, fused=fused)
    return out, (k, v)


AttentionCore = Callable[..., tuple[Tensor, KVCache]]


class Attention(nn.Module):
    """Multi-head self-attention with the NeuTRENO fidelity term.

    forward returns the output and this layer's value tensor, so the model can hand layer 0's
    values to every later layer as v0. `core` is `attention_core` by default; the ONNX exporter
    replaces it with a function that emits one `ai.neutreno::FidelityAttention` node.
    """

    def __init__(
        self, dim: int, heads: int, *, lam: float = 0.0, causal: bool = False, qkv_bias: bool = True
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.lam, self.causal = lam, causal
        self.fused = True
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.core: AttentionCore = attention_core

    def forward(
        self,
        x: Tensor,
        v0: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        past: KVCache | None = None,
    ) -> tuple[Tensor, Tensor, KVCache]:
        """x: (B, T, C); v0: (B, H, T, D) or None for the first layer.

        Returns (out (B, T, C), v (B, H, T, D) of the current tokens, present KV cache).
        """
        b, t, c = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, T, D)
        y, present = self.core(
            q, k, v, v0, lam=self.lam, causal=self.causal, mask=mask, past=past, fused=self.fused
        )
        y = y.transpose(1, 2).reshape(b, t, c)
        return self.proj(y), v, present


def effective_lam(attention: AttentionKind, lam: float) -> float:
    """The fidelity weight a model really uses: `lam` for NeuTRENO, 0 for the softmax baseline."""
    if attention not in ("neutreno", "softmax"):
        raise ValueError(f"attention must be 'neutreno' or 'softmax', got {attention!r}")
    return lam if attention == "neutreno" else 0.0
