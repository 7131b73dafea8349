"""Batched KV caches for the LM graph (docs/BUNDLE_FORMAT.md), left-padded, kept on the device.

A `KVBatch` holds, for B running sequences, every layer's past key and value (B, heads, P,
head_dim) and the attention mask (B, P) that marks real positions with 1. Sequences of different
lengths share the batch by left padding: the graph computes positions from the mask, so padding
changes nothing but float noise.

The past lives where the model runs: after each run it is the graph's `present` outputs as ONNX
Runtime `OrtValue`s on the session's device (GPU memory under CUDA), bound straight back as the
next step's inputs, so a decode step moves only token ids in and logits out. When the batch
changes rows (`merged`: some leave, some join, columns that are padding in every row trimmed)
the cache is re-laid on the device too, by one run of a small graph
(`service.engine.kv_ops.KVOps`): it never visits the host. Only the mask (B, P) int64 is kept
on the host, where the scheduler reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TypeAlias

import numpy as np
from onnxruntime import OrtValue

from export.bundle import ATTENTION_MASK, INPUT_IDS, PAST, PRESENT, kv_names
from service.engine.kv_ops import KVOps
from service.messages import Feeds

Resident = dict[str, OrtValue]  # tensors that stay on the session's device between runs
Cache: TypeAlias = np.ndarray | OrtValue


@dataclass(frozen=True)
class LMGraph:
    """Names and sizes of an LM graph's inputs and outputs, from the manifest."""

    num_layers: int
    num_heads: int
    head_dim: int
    dtype: np.dtype

    @cached_property
    def past_names(self) -> list[str]:
        return kv_names(self.num_layers, PAST)

    @cached_property
    def present_names(self) -> list[str]:
        return kv_names(self.num_layers, PRESENT)

    def empty_past(self, batch: int) -> list[np.ndarray]:
        shape = (batch, self.num_heads, 0, self.head_dim)
        return [np.zeros(shape, self.dtype) for _ in range(2 * self.num_layers)]


@dataclass
class KVBatch:
    """past[j] (B, heads, P, head_dim) per layer key/value, numpy or resident; mask (B, P)."""

    past: list[Cache]
    mask: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @classmethod
    def empty(cls, graph: LMGraph) -> KVBatch:
        return cls(graph.empty_past(0), np.zeros((0, 0), np.int64))

    def merged(self, keep: list[int], joining: KVBatch | None, ops: KVOps) -> KVBatch:
        """Rows `keep` of this batch (in that order, leading columns that are padding in all
        of them trimmed), then `joining`'s rows, both left-padded to the longer past: one run
        of the re-lay graph on the device, whatever leaves and joins."""
        idx = np.asarray(keep, np.int64)
        mask = self.mask[idx]
        used = np.flatnonzero(mask.any(axis=0))
        start = int(used[0]) if used.size else mask.shape[1]
        mask = mask[:, start:]
        if joining is None:
            past = ops.rebuild(self.past, idx, start, 0, ops.empty, 0)
            return KVBatch(list(past), mask)
        ours, theirs = mask.shape[1], joining.mask.shape[1]
        length = max(ours, theirs)
        past = ops.rebuild(self.past, idx, start, length - ours, joining.past, length - theirs)
        mask = np.concatenate(
            [
                np.pad(mask, ((0, 0), (length - ours, 0))),
                np.pad(joining.mask, ((0, 0), (length - theirs, 0))),
            ]
        )
        return KVBatch(list(past), mask)

    def decode_inputs(self, graph: LMGraph, tokens: np.ndarray) -> tuple[Feeds, Resident]:
        """Inputs of one decode step: tokens (B,) -> input_ids (B, 1), mask (B, P + 1) from the
        host; the past as it is (resident values are bound, numpy ones uploaded)."""
        feeds: Feeds = {
            INPUT_IDS: tokens.reshape(-1, 1).astype(np.int64),
            ATTENTION_MASK: np.concatenate([self.mask, np.ones((self.rows, 1), np.int64)], axis=1),
        }
        resident: Resident = {}
        for name, past in zip(graph.past_names, self.past, strict=True):
            if isinstance(past, OrtValue):
                resident[name] = past
            else:
                feeds[name] = past
        return feeds, resident


def prefill_feeds(graph: LMGraph, prompts: list[tuple[int, ...]]) -> Feeds:
    """Left-padded prompts: input_ids and attention_mask (B, L), empty past (B, heads, 0, D)."""
    length = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), length), np.int64)
    mask = np.zeros((len(prompts), length), np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt) :] = prompt
        mask[row, length - len(prompt) :] = 1
    feeds = {INPUT_IDS: ids, ATTENTION_MASK: mask}
    feeds.update(zip(graph.past_names, graph.empty_past(len(prompts)), strict=True))
    return feeds


def after_run(graph: LMGraph, feeds: Feeds, presents: Resident) -> KVBatch:
    """The KV batch a run of `feeds` leaves: its presents become the past, the mask it was fed
    the mask (a prefill's prompt mask (B, L), or a decode step's grown mask (B, P + 1) from
    `KVBatch.decode_inputs`)."""
    return KVBatch([presents[n] for n in graph.present_names], feeds[ATTENTION_MASK])
