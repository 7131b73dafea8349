"""Next-token choice from one row of logits: greedy, temperature, top-k, top-p, seeded.

Each sequence owns a `Sampler` holding its own `numpy.random.Generator`, so a seeded request
draws the same random numbers (one per token) whatever else shares its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 = greedy; top_k 0 and top_p 1 switch those filters off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(..., vocab) float -> (..., vocab) float64 log-probabilities."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class Sampler:
    """Picks token ids from (vocab,) logits rows under one request's `SamplingParams`."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray) -> int:
        """(vocab,) logits -> token id."""
        p = self.params
        if p.temperature == 0.0:
            return int(np.argmax(logits))
        # Shift before dividing: (x - max) <= 0, so a tiny temperature gives -inf (never
        # inf - inf = NaN) everywhere but at the maxima: greedy, as the limit should be.
        x = logits.astype(np.float64)
        with np.errstate(over="ignore"):  # the -inf is the point
            scores = (x - x.max()) / p.temperature
        if 0 < p.top_k < scores.shape[0]:
            kth = np.partition(scores, -p.top_k)[-p.top_k]
            scores = np.where(scores >= kth, scores, -np.inf)
        order = np.argsort(-scores, kind="stable")
        probs = np.exp(scores[order] - scores[order[0]])
        probs /= probs.sum()
        cumulative = np.cumsum(probs)
        if p.top_p < 1.0:
            keep = int(np.searchsorted(cumulative, p.top_p)) + 1
            cumulative = cumulative[:keep] / cumulative[keep - 1]
        pick = int(np.searchsorted(cumulative, self._rng.random(), side="right"))
        return int(order[min(pick, len(cumulative) - 1)])


def top_logprobs(logprobs: np.ndarray, n: int) -> list[tuple[int, float]]:
    """(vocab,) log-probabilities -> the n best (token id, logprob), best first."""
    if n <= 0:
        return []
    best = (
        np.argpartition(-logprobs, n - 1)[:n]
        if n < logprobs.shape[0]
        else np.arange(logprobs.shape[0])
    )
    best = best[np.argsort(-logprobs[best], kind="stable")]
    return [(int(i), float(logprobs[i])) for i in best]
