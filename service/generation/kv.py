"""Batched KV caches for the LM graph (docs/BUNDLE_FORMAT.md), left-padded, as numpy arrays.

A `KVBatch` holds, for B running sequences, every layer's past key and value (B, heads, P,
head_dim) and the attention mask (B, P) that marks real positions with 1. Sequences of different
lengths share the batch by left padding: the graph computes positions from the mask, so padding
changes nothing but float noise. Rows are dropped with `select` and added with `concat`; both
trim columns that are padding in every row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from export.telemetry import skip_similarity

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class LMGraph:
    """Names and sizes of an LM graph's inputs and outputs, from the manifest."""

    num_layers: int
    num_heads: int
    head_dim: int
    dtype: np.dtype
    gated: bool = False  # the session takes export.telemetry's flag: decode steps skip it

    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{k}" for i in range(self.num_layers)
                for k in ("key", "value")]

    def present_names(self) -> list[str]:
        return [f"present.{i}.{k}" for i in range(self.num_layers) for k in ("key", "value")]

    def empty_past(self, batch: int) -> list[np.ndarray]:
        shape = (batch, self.num_heads, 0, self.head_dim)
        return [np.zeros(shape, self.dtype) for _ in range(2 * self.num_layers)]


@dataclass
class KVBatch:
    """past[j] (B, heads, P, head_dim) per layer key/value; mask (B, P) int64."""

    past: list[np.ndarray]
    mask: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @classmethod
    def empty(cls, graph: LMGraph) -> KVBatch:
        return cls(graph.empty_past(0), np.zeros((0, 0), np.int64))

    def select(self, keep: list[int]) -> KVBatch:
        """Only rows `keep` (in that order), leading all-padding columns trimmed."""
        idx = np.asarray(keep, np.int64)
        return KVBatch([p[idx] for p in self.past], self.mask[idx]).trimmed()

    def concat(self, other: KVBatch) -> KVBatch:
        """self's rows then other's, both left-padded to the longer past."""
        if self.rows == 0:
            return other
        length = max(self.mask.shape[1], other.mask.shape[1])
        a, b = self.padded(length), other.padded(length)
        return KVBatch([np.concatenate([x, y]) for x, y in zip(a.past, b.past, strict=True)],
                       np.concatenate([a.mask, b.mask]))

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

    def decode_feeds(self, graph: LMGraph, tokens: np.ndarray) -> Feeds:
        """Feeds for one decode step: tokens (B,) -> input_ids (B, 1), mask (B, P + 1)."""
        mask = np.concatenate([self.mask, np.ones((self.rows, 1), np.int64)], axis=1)
        feeds = {"input_ids": tokens.reshape(-1, 1).astype(np.int64), "attention_mask": mask}
        feeds.update(zip(graph.past_names(), self.past, strict=True))
        return skip_similarity(feeds) if graph.gated else feeds

    def advanced(self, graph: LMGraph, outputs: Feeds) -> KVBatch:
        """The batch after a decode step: presents become the past, the mask grows by one."""
        mask = np.concatenate([self.mask, np.ones((self.rows, 1), np.int64)], axis=1)
        return KVBatch([outputs[n] for n in graph.present_names()], mask)


def prefill_feeds(graph: LMGraph, prompts: list[tuple[int, ...]]) -> Feeds:
    """Left-padded prompts: input_ids and attention_mask (B, L), empty past (B, heads, 0, D)."""
    length = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), length), np.int64)
    mask = np.zeros((len(prompts), length), np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt):] = prompt
        mask[row, length - len(prompt):] = 1
    feeds = {"input_ids": ids, "attention_mask": mask}
    feeds.update(zip(graph.past_names(), graph.empty_past(len(prompts)), strict=True))
    return feeds


def prefilled(graph: LMGraph, feeds: Feeds, outputs: Feeds) -> KVBatch:
    """The KV batch a prefill run leaves: its presents and its prompt mask."""
    return KVBatch([outputs[n] for n in graph.present_names()], feeds["attention_mask"])
