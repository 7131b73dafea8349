"""Pre-LN transformer blocks shared by the ViT, the segmenter and the language model."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from models.attention import Attention, KVCache


class Mlp(nn.Module):
    """Linear -> GELU -> Linear, (B, T, C) -> (B, T, C)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """x + attn(ln(x)); x + mlp(ln(x)). Returns the block's values too, for NeuTRENO's v0."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        *,
        lam: float,
        causal: bool,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, lam=lam, causal=causal)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        v0: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        past: KVCache | None = None,
    ) -> tuple[Tensor, Tensor, KVCache]:
        """x: (B, T, C) -> (x (B, T, C), v (B, H, T, D), present KV cache)."""
        a, v, present = self.attn(self.norm1(x), v0, mask=mask, past=past)
        x = x + self.drop(a)
        x = x + self.mlp(self.norm2(x))
        return x, v, present


@dataclass
class StackOutput:
    """What a stack of blocks produces: final tokens, every layer's output, the new KV caches."""

    x: Tensor
    hidden: list[Tensor] = field(default_factory=list)
    presents: list[KVCache] = field(default_factory=list)


def run_blocks(
    blocks: nn.ModuleList,
    x: Tensor,
    *,
    mask: Tensor | None = None,
    past: list[KVCache] | None = None,
) -> StackOutput:
    """Run blocks in order; layer 0 has no fidelity term and its values become v0 for the rest.

    x: (B, T, C). hidden[i] is layer i's output (B, T, C); presents[i] its (k, v) cache.
    """
    out = StackOutput(x)
    v0: Tensor | None = None
    for i, block in enumerate(blocks):
        x, v, present = block(x, v0, mask=mask, past=None if past is None else past[i])
        if i == 0:
            v0 = v
        out.hidden.append(x)
        out.presents.append(present)
    out.x = x
    return out
