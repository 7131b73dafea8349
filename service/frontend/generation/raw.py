"""Bounds on raw `/v2/models/{lm}/infer` runs of a language model's graph.

The v2 route feeds the graph directly (input_ids, attention_mask, past_key_values.*), bypassing
the scheduler. Without these checks a request could run any length: an all-zero attention mask
clamps positions to 0, and attention memory grows with the square of the length. Here a run must
fit what /v1/completions allows: total length (past + new tokens) within the model's context,
rows within NEUTRENO_MAX_RUNNING_SEQUENCES, rows x length within NEUTRENO_MAX_CACHED_TOKENS,
token ids inside the vocabulary and mask values 0 or 1. Raw runs wait for the model's thread
under the request deadline (504) and the in-flight cap rather than in the generation queue.
"""

from __future__ import annotations

import numpy as np

from export.bundle import ATTENTION_MASK, INPUT_IDS, PAST
from service.errors import BadRequest, PayloadTooLarge
from service.frontend.generation.validation import ModelLimits


def check_raw_feeds(
    feeds: dict[str, np.ndarray], limits: ModelLimits, vocab_size: int, max_rows: int
) -> None:
    """Raise BadRequest / PayloadTooLarge unless these decoded v2 feeds are a bounded run.

    feeds: input_ids (B, S), attention_mask (B, T) with T = past + S, and past_key_values.*
    (B, heads, past, head_dim), as `service.frontend.oip.decode_inputs` returns them (shapes checked
    against the graph's rank and fixed dims already).
    """
    ids, mask = feeds[INPUT_IDS], feeds[ATTENTION_MASK]
    rows, new = ids.shape
    pasts = {a.shape[2] for n, a in feeds.items() if n.startswith(f"{PAST}.")}
    if len(pasts) > 1:
        raise BadRequest(f"past_key_values tensors disagree on the cached length: {sorted(pasts)}")
    total = new + (pasts.pop() if pasts else 0)
    if new < 1 or mask.shape != (rows, total):
        raise BadRequest(
            f"attention_mask must be (batch, past + sequence) = ({rows}, {total}) "
            f"with at least one new token; got {list(mask.shape)}"
        )
    if total > limits.context_length:
        raise PayloadTooLarge(
            f"{total} tokens (past + sequence) exceed the model's context of "
            f"{limits.context_length}"
        )
    if rows > max_rows or rows * total > limits.max_cached_tokens:
        raise PayloadTooLarge(
            f"{rows} rows of {total} tokens exceed the limits of {max_rows} rows "
            f"(NEUTRENO_MAX_RUNNING_SEQUENCES) and {limits.max_cached_tokens} tokens "
            "(NEUTRENO_MAX_CACHED_TOKENS)"
        )
    if ((ids < 0) | (ids >= vocab_size)).any():
        raise BadRequest(f"input_ids outside [0, {vocab_size})")
    if ((mask != 0) & (mask != 1)).any():
        raise BadRequest("attention_mask values must be 0 or 1")
