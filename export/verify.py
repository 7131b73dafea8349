"""ONNX Runtime vs PyTorch parity of an exported graph, on random and real inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from export.bundle import PIXEL_VALUES
from export.graphs import VisionModel
from export.runtime import LMStep, lm_step
from models.attention import KVCache
from models.checkpoint import Sample
from models.config import LMConfig, ModelConfig, ViTConfig
from models.lm import CausalLM

TOLERANCE = 1e-4  # max abs difference, fp32
FP16_RELATIVE = 1e-2  # fp16 graph vs fp32 torch: max abs diff / max(1, max |torch|)
# Real prompts for LM parity when no data folder is given (Genesis 1:1-3, public domain).
KJV_PROMPTS = [
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
    "And God said, Let there be light: and there was light.",
]


class ParityError(RuntimeError):
    """ONNX Runtime and PyTorch disagree beyond the tolerance."""


@dataclass
class Parity:
    """Max abs difference of every output over a set of inputs, and what the inputs were."""

    inputs: str
    max_abs_diff: float
    max_abs_torch: float

    def check(self, fp16: bool = False) -> Parity:
        limit = FP16_RELATIVE * max(1.0, self.max_abs_torch) if fp16 else TOLERANCE
        if not self.max_abs_diff <= limit:
            raise ParityError(
                f"ONNX Runtime vs PyTorch on {self.inputs}: max abs diff "
                f"{self.max_abs_diff:.3g} > {limit:.3g}"
            )
        return self


def compare(inputs: str, got: Sequence[np.ndarray], want: Sequence[Tensor]) -> Parity:
    """Parity of ORT outputs `got` against torch outputs `want` (same order)."""
    diff, scale = 0.0, 0.0
    for g, w in zip(got, want, strict=True):
        ref = w.detach().float().numpy()
        diff = max(diff, float(np.abs(g.astype(np.float32) - ref).max(initial=0.0)))
        scale = max(scale, float(np.abs(ref).max(initial=0.0)))
    return Parity(inputs, diff, scale)


def _feed_dtype(sess: ort.InferenceSession) -> type:
    return np.float16 if sess.get_inputs()[0].type == "tensor(float16)" else np.float32


@torch.no_grad()
def vision_parity(model: VisionModel, sess: ort.InferenceSession, x: Tensor, inputs: str) -> Parity:
    """x (B, C, H, W) through forward_with_similarity and the graph."""
    want = model.forward_with_similarity(x)
    got = sess.run(None, {PIXEL_VALUES: x.numpy().astype(_feed_dtype(sess))})
    return compare(inputs, got, want)


def _torch_step(
    model: CausalLM, ids: Tensor, mask: Tensor, past: list[KVCache] | None
) -> list[Tensor]:
    out = model(ids, mask, past)
    return [out.logits, *[t for kv in out.presents for t in kv], model.similarity(out, mask)]


def _ort_outputs(step: LMStep) -> list[np.ndarray]:
    return [step.logits, *[t for kv in step.presents for t in kv], step.token_similarity]


@torch.no_grad()
def lm_parity(
    model: CausalLM, sess: ort.InferenceSession, ids: Tensor, mask: Tensor, inputs: str
) -> Parity:
    """Prefill (empty past) on ids (B, T) with mask (B, T), then one decode step with the cache."""
    want = _torch_step(model, ids, mask, None)
    got = lm_step(sess, ids.numpy(), mask.numpy())
    first = compare(inputs, _ort_outputs(got), want)
    nxt = want[0][:, -1:].argmax(-1)  # (B, 1)
    mask2 = torch.cat([mask, torch.ones_like(nxt)], dim=1)
    past = [(want[1 + 2 * i], want[2 + 2 * i]) for i in range(len(got.presents))]
    want2 = _torch_step(model, nxt, mask2, past)
    got2 = lm_step(sess, nxt.numpy(), mask2.numpy(), got.presents)
    second = compare(inputs, _ort_outputs(got2), want2)
    return Parity(
        inputs,
        max(first.max_abs_diff, second.max_abs_diff),
        max(first.max_abs_torch, second.max_abs_torch),
    )


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Token lists -> (ids (B, T), attention_mask (B, T)), left padded to the longest."""
    t = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), t), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), t, dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            ids[i, t - len(s) :] = torch.tensor(s)
            mask[i, t - len(s) :] = 1
    return ids, mask


def random_vision(cfg: ViTConfig, batch: int, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=gen)


def random_lm(cfg: LMConfig, lengths: Sequence[int], seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return left_pad(
        [torch.randint(0, cfg.vocab_size, (n,), generator=gen).tolist() for n in lengths]
    )


def real_lm(tokenizer: str | Path) -> tuple[Tensor, Tensor]:
    """The KJV prompts, tokenized and left padded into one batch."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))
    return left_pad([tok.encode(p).ids for p in KJV_PROMPTS])


def verify(
    model: nn.Module,
    cfg: ModelConfig,
    sess: ort.InferenceSession,
    tokenizer: str | Path | None = None,
    fp16: bool = False,
    sample: Sample | None = None,
) -> list[Parity]:
    """Parity on random inputs at batch 1 and 8 (the LM: 1 and 3 padded prompts) and on real
    inputs: the tokenizer's prompts, or the checkpoint's held-out `sample` of images when it has
    one; raises ParityError beyond the tolerance. `model` is the class `cfg.family` builds."""
    model = model.eval()
    if isinstance(cfg, LMConfig):
        assert isinstance(model, CausalLM)
        checks = [
            lm_parity(model, sess, *random_lm(cfg, [9]), "random tokens, batch 1"),
            lm_parity(
                model, sess, *random_lm(cfg, [5, 12, 8]), "random tokens, batch 3, left padded"
            ),
        ]
        if tokenizer is not None:
            checks.append(lm_parity(model, sess, *real_lm(tokenizer), "3 KJV verses, left padded"))
    else:
        assert isinstance(cfg, ViTConfig) and isinstance(model, VisionModel)
        checks = [
            vision_parity(model, sess, random_vision(cfg, b), f"random images, batch {b}")
            for b in (1, 8)
        ]
        if sample is not None:
            checks.append(vision_parity(model, sess, *sample))
    return [c.check(fp16) for c in checks]
