"""Batched KV caches for the LM graph (docs/BUNDLE_FORMAT.md), left-padded, kept on the device.

A `KVBatch` holds, for B running sequences, every layer's past key and value (B, heads, P,
head_dim) and the attention mask (B, P) that marks real positions with 1. Sequences of different
lengths share the batch by left padding: the graph computes positions from the mask, so padding
changes nothing but float noise.

The past lives where the model runs: after each run it is the graph's `present` outputs as ONNX
Runtime `OrtValue`s on the session's device (GPU memory under CUDA), bound straight back as the
next step's inputs, so a decode step moves only token ids in and logits out. Only when the batch
changes shape (rows dropped with `select`, added with `concat`; both trim columns that are padding
in every row) is the cache brought to the host as numpy arrays, reshaped, and uploaded again by
the next run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
from onnxruntime import OrtValue

from export.bundle import ATTENTION_MASK, INPUT_IDS, PAST, PRESENT, kv_names

Feeds = dict[str, np.ndarray]
Resident = dict[str, OrtValue]  # tensors that stay on the session's device between runs
Cache: TypeAlias = np.ndarray | OrtValue


@dataclass(frozen=True)
class LMGraph:
    """Names and sizes of an LM graph's inputs and outputs, from the manifest."""

    num_layers: int
    num_heads: int
    head_dim: int
    dtype: np.dtype

    def past_names(self) -> list[str]:
        return kv_names(self.num_layers, PAST)

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

    @property
    def resident(self) -> bool:
        return any(isinstance(p, OrtValue) for p in self.past)

    def host(self) -> KVBatch:
        """The same batch with its past copied to numpy arrays (reshaping needs them)."""
        if not self.resident:
            return self
        return KVBatch([p.numpy() if isinstance(p, OrtValue) else p for p in self.past], self.mask)

    def select(self, keep: list[int]) -> KVBatch:
        """Only rows `keep` (in that order), leading all-padding columns trimmed."""
        idx = np.asarray(keep, np.int64)
        return KVBatch([p[idx] for p in self.host().past], self.mask[idx]).trimmed()

    def concat(self, other: KVBatch) -> KVBatch:
        """self's rows then other's, both left-padded to the longer past."""
        if self.rows == 0:
            return other
        length = max(self.mask.shape[1], other.mask.shape[1])
        a, b = self.host().padded(length), other.host().padded(length)
        return KVBatch(
            [np.concatenate([x, y]) for x, y in zip(a.past, b.past, strict=True)],
            np.concatenate([a.mask, b.mask]),
        )

    def padded(self, length: int) -> KVBatch:
        """Left-pad the past to `length` positions (mask 0 there)."""
        extra = length - self.mask.shape[1]
        if extra <= 0:
            return self
        past = [np.pad(p, ((0, 0), (0, 0), (extra, 0), (0, 0))) for p in self.past]
        return KVBatch(past, np.pad(self.mask, ((0, 0), (extra, 0))))

    def trimmed(self) -> KVBatch:
        """Drop leading columns that are padding in every row."""
        if self.rows == 0:
            return KVBatch([p[:, :, :0] for p in self.past], self.mask[:, :0])
        used = np.flatnonzero(self.mask.any(axis=0))
        start = int(used[0]) if used.size else self.mask.shape[1]
        if start == 0:
            return self
        return KVBatch([p[:, :, start:] for p in self.past], self.mask[:, start:])

    def decode_inputs(self, graph: LMGraph, tokens: np.ndarray) -> tuple[Feeds, Resident]:
        """Inputs of one decode step: tokens (B,) -> input_ids (B, 1), mask (B, P + 1) from the
        host; the past as it is (resident values are bound, numpy ones uploaded)."""
        feeds: Feeds = {
            INPUT_IDS: tokens.reshape(-1, 1).astype(np.int64),
            ATTENTION_MASK: self.grown_mask(),
        }
        resident: Resident = {}
        for name, past in zip(graph.past_names(), self.past, strict=True):
            if isinstance(past, OrtValue):
                resident[name] = past
            else:
                feeds[name] = past
        return feeds, resident

    def grown_mask(self) -> np.ndarray:
        """The mask after one more real position: (B, P + 1)."""
        return np.concatenate([self.mask, np.ones((self.rows, 1), np.int64)], axis=1)

    def advanced(self, graph: LMGraph, presents: Resident) -> KVBatch:
        """The batch after a decode step: presents become the past, the mask grows by one."""
        return KVBatch([presents[n] for n in graph.present_names()], self.grown_mask())


def prefill_feeds(graph: LMGraph, prompts: list[tuple[int, ...]]) -> Feeds:
    """Left-padded prompts: input_ids and attention_mask (B, L), empty past (B, heads, 0, D)."""
    length = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), length), np.int64)
    mask = np.zeros((len(prompts), length), np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt) :] = prompt
        mask[row, length - len(prompt) :] = 1
    feeds = {INPUT_IDS: ids, ATTENTION_MASK: mask}
    feeds.update(zip(graph.past_names(), graph.empty_past(len(prompts)), strict=True))
    return feeds


def prefilled(graph: LMGraph, feeds: Feeds, presents: Resident) -> KVBatch:
    """The KV batch a prefill run leaves: its presents and its prompt mask."""
    return KVBatch([presents[n] for n in graph.present_names()], feeds[ATTENTION_MASK])
