"""The torch side of FidelityAttention: custom op, attention swap and exporter translations.

Export path (docs/ARCHITECTURE.md): `Attention.core` is swapped for `onnx_core`, which calls the
`neutreno::fidelity_attention` torch custom op (fake impl for tracing); the translation table
turns that op into the bare `ai.neutreno::FidelityAttention` node; `export.opdef.attach_functions`
then adds the function bodies after export. `translate_softmax` emits the standard opset-23
`Attention` instead, for the softmax baseline.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import onnxscript
import torch
from onnxscript import opset23
from torch import Tensor, nn

from export.opdef import DOMAIN, OP_TYPE, OP_VERSION, register_schema
from models.attention import Attention, KVCache, attention_core, causal_mask

NEUTRENO = onnxscript.values.Opset(DOMAIN, OP_VERSION)


def _kv_cache(past_key: Tensor | None, past_value: Tensor | None) -> KVCache | None:
    """The op's past as a KV cache: `onnx_core` passes both halves of one, or neither."""
    if past_key is None:
        return None
    assert past_value is not None
    return past_key, past_value


@torch.library.custom_op("neutreno::fidelity_attention", mutates_args=())
def fidelity_attention_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    v0: Tensor | None,
    mask: Tensor | None,
    past_key: Tensor | None,
    past_value: Tensor | None,
    lam: float,
    causal: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """models.attention.attention_core as one op: (Y, present_key, present_value)."""
    past = _kv_cache(past_key, past_value)
    out, (k_all, v_all) = attention_core(
        q, k, v, v0, lam=lam, causal=causal, mask=mask, past=past, fused=False
    )
    if past is None:  # a custom op's outputs may not alias its inputs
        k_all, v_all = k_all.clone(), v_all.clone()
    return out, k_all, v_all


@fidelity_attention_op.register_fake
def _(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    v0: Tensor | None,
    mask: Tensor | None,
    past_key: Tensor | None,
    past_value: Tensor | None,
    lam: float,
    causal: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    past = _kv_cache(past_key, past_value)
    if past is not None:
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
    return q.new_empty(q.shape[:-1] + v.shape[-1:]), torch.empty_like(k), torch.empty_like(v)


def onnx_core(
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
    """Drop-in for `attention_core` that calls the custom op.

    Causality is folded into the bool mask, so the node's attn_mask is the complete mask
    (B or 1, 1, Tq, P + Tq) and the exported node has causal = 0.
    """
    past_key, past_value = (None, None) if past is None else past
    if causal:
        k_len = k.shape[2] + (0 if past_key is None else past_key.shape[2])
        c = causal_mask(q.shape[2], k_len, q.device)[None, None]
        mask = c if mask is None else mask & c
    if v0 is None or lam == 0.0:
        v0, lam = None, 0.0
    out, k_all, v_all = fidelity_attention_op(
        q, k, v, v0, mask, past_key, past_value, float(lam), False
    )
    return out, (k_all, v_all)


@contextlib.contextmanager
def custom_op_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block every `Attention.core` of `model` is `onnx_core`; restored afterwards."""
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    saved = [m.core for m in layers]
    for m in layers:
        m.core = onnx_core
    try:
        yield model
    finally:
        for m, core in zip(layers, saved, strict=False):
            m.core = core


# torch.onnx reads a translation's signature from its annotations (unannotated parameters are
# graph inputs of any type, annotated ones attributes), so the tensor parameters stay unannotated.
def translate_fidelity(  # type: ignore[no-untyped-def]
    q,
    k,
    v,
    v0=None,
    mask=None,
    past_key=None,
    past_value=None,
    lam: float = 0.0,
    causal: bool = False,
):
    """Exporter translation: the bare ai.neutreno::FidelityAttention node."""
    return getattr(NEUTRENO, OP_TYPE)(
        q, k, v, v0, mask, past_key, past_value, lam=lam, causal=int(causal), _num_outputs=3
    )


def translate_softmax(  # type: ignore[no-untyped-def]  # unannotated: see translate_fidelity
    q,
    k,
    v,
    v0=None,
    mask=None,
    past_key=None,
    past_value=None,
    lam: float = 0.0,
    causal: bool = False,
):
    """Exporter translation for the softmax baseline: the standard opset-23 Attention node."""
    if v0 is not None:
        raise ValueError("the standard Attention export needs lam = 0 (no V0)")
    y, present_key, present_value, _ = opset23.Attention(
        q, k, v, mask, past_key, past_value, is_causal=int(causal)
    )
    return y, present_key, present_value


def translation_table(standard: bool = False) -> dict[Callable[..., Any], Callable[..., Any]]:
    """custom_translation_table for torch.onnx.export: FidelityAttention or standard Attention."""
    register_schema()
    fn = translate_softmax if standard else translate_fidelity
    return {torch.ops.neutreno.fidelity_attention.default: fn}
