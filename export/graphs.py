"""Export graphs: which tensors each model family takes and returns, and the ONNX export itself.

Vision models export `forward_with_similarity`: pixel_values (batch, C, H, W) -> logits and
token_similarity (batch, layers). The LM exports one KV-cache graph for prefill and decode:
input_ids (batch, seq), attention_mask (batch, past + seq), past_key_values.{i}.key|value
(batch, heads, past, head_dim) -> logits (batch, seq, vocab), present.{i}.key|value
(batch, heads, past + seq, head_dim), token_similarity (batch, depth).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, TypeAlias

import onnx
import torch
from torch import Tensor, nn

from export.bundle import (
    ATTENTION_MASK,
    INPUT_IDS,
    LOGITS,
    PAST,
    PIXEL_VALUES,
    PRESENT,
    SIMILARITY,
    kv_names,
)
from export.opdef import attach_functions
from export.ops import custom_op_attention, translation_table
from models.config import LMConfig, ModelConfig, ViTConfig
from models.lm import CausalLM
from models.segmenter import Segmenter
from models.vit import ViT

# torch.export specialises example dims of 0 and 1, so every dynamic axis starts at >= 2.
EXAMPLE_BATCH, EXAMPLE_SEQ, EXAMPLE_PAST = 2, 3, 4

VisionModel: TypeAlias = ViT | Segmenter  # the families exported via forward_with_similarity


class VisionGraph(nn.Module):
    """pixel_values (B, C, H, W) -> (logits, token_similarity (B, layers))."""

    def __init__(self, model: VisionModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.forward_with_similarity(pixel_values)


class LMGraph(nn.Module):
    """(input_ids, attention_mask, past_key_values) -> (logits, *presents, token_similarity)."""

    def __init__(self, model: CausalLM) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        past_key_values: list[tuple[Tensor, Tensor]],
    ) -> tuple[Tensor, ...]:
        out = self.model(input_ids, attention_mask, list(past_key_values))
        presents = [t for kv in out.presents for t in kv]
        return (out.logits, *presents, self.model.similarity(out, attention_mask))


@dataclass
class GraphSpec:
    """A wrapper module with example inputs, ONNX names and dynamic axes."""

    module: nn.Module
    args: tuple[Any, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_shapes: dict[str, Any]


def vision_spec(model: VisionModel, cfg: ViTConfig, dtype: torch.dtype) -> GraphSpec:
    x = torch.randn(EXAMPLE_BATCH, cfg.in_chans, cfg.img_size, cfg.img_size, dtype=dtype)
    return GraphSpec(
        VisionGraph(model),
        (x,),
        [PIXEL_VALUES],
        [LOGITS, SIMILARITY],
        {PIXEL_VALUES: {0: "batch"}},
    )


def lm_spec(model: CausalLM, cfg: LMConfig, dtype: torch.dtype) -> GraphSpec:
    b, t, p, d = EXAMPLE_BATCH, EXAMPLE_SEQ, EXAMPLE_PAST, cfg.dim // cfg.heads
    ids = torch.randint(0, cfg.vocab_size, (b, t))
    mask = torch.ones(b, p + t, dtype=torch.long)
    past = [
        (torch.randn(b, cfg.heads, p, d, dtype=dtype), torch.randn(b, cfg.heads, p, d, dtype=dtype))
        for _ in range(cfg.depth)
    ]
    kv_axes = {0: "batch", 2: "past_sequence"}
    dynamic = {
        INPUT_IDS: {0: "batch", 1: "sequence"},
        ATTENTION_MASK: {0: "batch", 1: "total_sequence"},
        "past_key_values": [(kv_axes, kv_axes) for _ in range(cfg.depth)],
    }
    return GraphSpec(
        LMGraph(model),
        (ids, mask, past),
        [INPUT_IDS, ATTENTION_MASK, *kv_names(cfg.depth, PAST)],
        [LOGITS, *kv_names(cfg.depth, PRESENT), SIMILARITY],
        dynamic,
    )


def graph_spec(model: nn.Module, cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> GraphSpec:
    """The export graph of a model family (`model` is the class `cfg.family` builds)."""
    if isinstance(cfg, LMConfig):
        assert isinstance(model, CausalLM)
        return lm_spec(model, cfg, dtype)
    assert isinstance(cfg, ViTConfig) and isinstance(model, VisionModel)
    return vision_spec(model, cfg, dtype)


def export_model(
    model: nn.Module, cfg: ModelConfig, *, standard: bool = False, fp16: bool = False
) -> onnx.ModelProto:
    """Export `model` (eval mode) to ONNX with one FidelityAttention node per attention layer.

    standard=True exports the standard opset-23 Attention instead (softmax baseline, lam = 0).
    fp16 exports half-precision weights and float tensors (for GPU serving).
    """
    dtype = torch.float16 if fp16 else torch.float32
    model = (copy.deepcopy(model).half() if fp16 else model).eval()
    spec = graph_spec(model, cfg, dtype)
    with custom_op_attention(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            spec.module,
            spec.args,
            dynamo=True,
            opset_version=23,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_shapes=spec.dynamic_shapes,
            custom_translation_table=translation_table(standard),
            external_data=False,
            verbose=False,
        )
    assert program is not None  # torch.onnx.export returns None only when dynamo=False
    proto = program.model_proto
    if not standard:
        attach_functions(proto)
    onnx.checker.check_model(proto, full_check=True)
    return proto
