"""Next-token choice for a whole decode batch at once: greedy, temperature, top-k, top-p, seeded.

`sample_batch` takes the step's (B, vocab) logits and every row's `SamplingParams` and random
generator, and works on arrays: greedy rows are one argmax over their rows; sampled rows are
tempered, filtered (top-k, then top-p) and drawn together. Each sequence owns its
`numpy.random.Generator` and draws exactly one number per token from it, so a seeded request
gets the same tokens whatever else shares its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.messages import SamplingParams, TopLogprobs


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(..., vocab) float -> (..., vocab) float64 log-probabilities."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def sample_batch(
    logits: np.ndarray,
    params: Sequence[SamplingParams],
    rngs: Sequence[np.random.Generator],
) -> np.ndarray:
    """(B, vocab) logits -> (B,) int64 token ids, row r under params[r] drawing from rngs[r]."""
    temps = np.fromiter((p.temperature for p in params), np.float64, len(params))
    greedy = temps == 0.0
    if greedy.all():  # the common case: no row copied
        return np.argmax(logits, axis=-1).astype(np.int64)
    ids = np.empty(len(params), np.int64)
    if greedy.any():
        ids[greedy] = np.argmax(logits[greedy], axis=-1)
    rows = [int(r) for r in np.flatnonzero(~greedy)]
    if rows:
        draws = np.array([rngs[r].random() for r in rows])
        ids[rows] = _draw(
            logits[rows],
            temps[rows],
            np.array([params[r].top_k for r in rows], np.int64),
            np.array([params[r].top_p for r in rows], np.float64),
            draws,
        )
    return ids


def _draw(
    logits: np.ndarray, temps: np.ndarray, top_k: np.ndarray, top_p: np.ndarray, u: np.ndarray
) -> np.ndarray:
    """Sampled rows: logits (R, V), temps/top_k/top_p/u (R,) -> (R,) ids.

    Shift before dividing: (x - max) <= 0, so a tiny temperature gives -inf (never inf - inf =
    NaN) everywhere but at the maxima, greedy as the limit should be.
    """
    x = logits.astype(np.float64)
    with np.errstate(over="ignore"):  # the -inf is the point
        scores = (x - x.max(axis=-1, keepdims=True)) / temps[:, None]
    order = np.argsort(-scores, axis=-1, kind="stable")  # (R, V) best first
    ranked = np.take_along_axis(scores, order, axis=-1)
    vocab = scores.shape[1]
    k = np.where((top_k > 0) & (top_k < vocab), top_k, vocab)
    kth = np.take_along_axis(ranked, (k - 1)[:, None], axis=-1)  # ties with the k-th stay in
    ranked = np.where(ranked >= kth, ranked, -np.inf)
    probs = np.exp(ranked - ranked[:, :1])
    cumulative = np.cumsum(probs, axis=-1)
    cumulative /= cumulative[:, -1:]
    keep = np.where(
        top_p < 1.0, (cumulative < top_p[:, None]).sum(axis=-1) + 1, vocab
    )  # tokens inside the nucleus
    keep = np.minimum(keep, vocab)
    cumulative = cumulative / np.take_along_axis(cumulative, (keep - 1)[:, None], axis=-1)
    inside = np.arange(vocab)[None, :] < keep[:, None]
    pick = ((cumulative <= u[:, None]) & inside).sum(axis=-1)
    pick = np.minimum(pick, keep - 1)
    return np.take_along_axis(order, pick[:, None], axis=-1)[:, 0]


def top_logprobs(logprobs: np.ndarray, n: int) -> TopLogprobs:
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
