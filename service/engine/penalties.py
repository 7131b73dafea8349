"""Per-sequence logit controls applied before sampling: logit_bias, min_tokens, penalties.

Semantics follow the APIs users know them from:
- `logit_bias` (OpenAI): token id -> value in [-100, 100] added to that token's logit.
- `min_tokens` (vLLM): EOS cannot be drawn (its logit is -inf) until that many tokens exist;
  stop strings are ignored as long (see `Sequence`).
- `repetition_penalty` (vLLM, after CTRL): every token already in the prompt or the output has
  its logit divided by the penalty when positive, multiplied when negative; 1 = off.
- `frequency_penalty` / `presence_penalty` (OpenAI): subtract `frequency * count` and
  `presence * (count > 0)` over the tokens generated so far, in [-2, 2].

Each sequence owns its `LogitsProcessor` and only its own tokens feed it, so the result depends
on the row alone: the same under any batch composition, and deterministic under `seed`.
"""

from __future__ import annotations

import numpy as np

from service.messages import Penalties


class LogitsProcessor:
    """Applies one sequence's `Penalties` to its (vocab,) logits rows, step after step."""

    def __init__(
        self, penalties: Penalties, prompt_ids: tuple[int, ...], vocab_size: int, eos_id: int | None
    ) -> None:
        self.penalties = penalties
        self.eos_id = eos_id
        self._counts = np.zeros(vocab_size, np.int64)  # per token, in the output so far
        self._seen = np.zeros(vocab_size, bool)  # in the prompt or the output
        self._seen[list(prompt_ids)] = True
        self._bias_ids = np.array([t for t, _ in penalties.logit_bias], np.int64)
        self._bias = np.array([b for _, b in penalties.logit_bias], np.float64)
        self._generated = 0

    def observe(self, token_id: int) -> None:
        """Count a token the sequence has just generated."""
        self._counts[token_id] += 1
        self._seen[token_id] = True
        self._generated += 1

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """(vocab,) logits -> (vocab,) float64 logits with every control applied (a copy)."""
        p = self.penalties
        out = logits.astype(np.float64)
        if self._bias_ids.size:
            np.add.at(out, self._bias_ids, self._bias)
        if self._generated < p.min_tokens and self.eos_id is not None:
            out[self.eos_id] = -np.inf
        if p.repetition != 1.0:
            seen = out[self._seen]
            out[self._seen] = np.where(seen > 0, seen / p.repetition, seen * p.repetition)
        if p.frequency or p.presence:
            out -= p.frequency * self._counts + p.presence * (self._counts > 0)
        return out
