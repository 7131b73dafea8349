"""Over-smoothing diagnostics: mean pairwise cosine similarity of token vectors, per layer.

The paper's measure of over-smoothing: as depth grows, softmax attention drives token vectors
towards one another, so their mean pairwise cosine similarity climbs towards 1. The formula here
is O(N D) rather than O(N^2 D): with unit vectors u_i and s = sum_i u_i,
sum_{i != j} u_i . u_j = |s|^2 - N, so the mean over the N (N - 1) ordered pairs is
(|s|^2 - N) / (N (N - 1)). It is plain tensor math so it also runs inside exported ONNX graphs.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class Features(Protocol):
    """What a model's forward_features returns: at least every layer's output (B, N, D)."""

    @property
    def hidden(self) -> list[Tensor]: ...


class FeatureModel(Protocol):
    """A model here with forward_features (the ViT, the Segmenter, the causal LM)."""

    def eval(self) -> object: ...
    def forward_features(self, x: Tensor, /) -> Features: ...


def token_similarity(x: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean pairwise cosine similarity of the tokens of each sequence.

    Args:
        x: (B, N, D) token vectors.
        weights: optional (B, N) 0/1 mask of the tokens to include (padding excluded).
    Returns:
        (B,) values in [-1, 1]; 0 for a sequence with fewer than two tokens.
    """
    u = torch.nn.functional.normalize(x.float(), dim=-1)  # (B, N, D)
    if weights is None:
        n = torch.full(x.shape[:1], float(x.shape[1]), device=x.device)
    else:
        w = weights.to(u.dtype)
        u = u * w.unsqueeze(-1)
        n = w.sum(-1)
    s = u.sum(dim=1)  # (B, D)
    pairs = n * (n - 1)
    sim = (s.pow(2).sum(-1) - n) / pairs.clamp(min=1.0)
    return torch.where(pairs > 0, sim, torch.zeros_like(sim)).clamp(-1.0, 1.0)


def layer_similarity(hidden: list[Tensor], weights: Tensor | None = None) -> Tensor:
    """Per-layer similarity: hidden is a list of L tensors (B, N, D); returns (B, L)."""
    return torch.stack([token_similarity(h, weights) for h in hidden], dim=1)


@torch.no_grad()
def model_similarity(model: FeatureModel, inputs: Tensor) -> list[float]:
    """Batch-mean similarity per layer for any model here whose forward_features returns hidden."""
    model.eval()
    out = model.forward_features(inputs)
    return layer_similarity(out.hidden).mean(0).tolist()
