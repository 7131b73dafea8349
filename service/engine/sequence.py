"""One generating sequence: its tokens, text, stop strings, logprobs and output queue.

The scheduler calls `prompt_scored` after prefill (echo) and `append` for every sampled token;
the sequence turns tokens into `Chunk`s of stop-safe text on its `outbox`, which the HTTP layer
reads. Text that might be the start of a stop string is held back until it is known not to be.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from service import tracing
from service.engine.penalties import LogitsProcessor
from service.engine.sampling import Sampler, log_softmax, top_logprobs
from service.errors import ServiceError
from service.frontend.generation.schemas import FinishReason
from service.frontend.generation.tokenizer import IncrementalDecoder, TextTokenizer
from service.frontend.generation.validation import ValidRequest


@dataclass
class TokenLogprob:
    """One token as OpenAI's legacy logprobs lists it; offset is into the choice's text."""

    token: str
    logprob: float | None
    top: dict[str, float] | None
    offset: int


@dataclass
class Chunk:
    """New output of one sequence: text, its tokens' logprobs, the finish reason when done."""

    index: int
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    error: ServiceError | None = None
    new_tokens: int = 0  # tokens generated since this sequence's previous chunk (usage)


class ChunkReader:
    """The chunks of one request's sequences, read from their shared queue until every one has
    finished or failed; counts the completion tokens they report (usage)."""

    def __init__(self, requests: list[ValidRequest], outbox: asyncio.Queue[Chunk]) -> None:
        self.requests = requests
        self.outbox = outbox
        self.completion_tokens = 0

    async def chunks(self) -> AsyncIterator[Chunk]:
        remaining = len(self.requests)
        while remaining:
            chunk = await self.outbox.get()
            if chunk.finish_reason is not None or chunk.error is not None:
                remaining -= 1
            self.completion_tokens += chunk.new_tokens
            yield chunk


class Sequence:
    """Per-request generation state owned by the scheduler."""

    def __init__(
        self, request: ValidRequest, tokenizer: TextTokenizer, outbox: asyncio.Queue[Chunk]
    ) -> None:
        self.request = request
        self.tokenizer = tokenizer
        self.outbox = outbox
        self.sampler = Sampler(request.sampling)
        self.processor = _processor(request, tokenizer)
        self.generated: list[int] = []
        self.finish_reason: FinishReason | Literal["error"] | None = None
        self.cancelled = False
        self.enqueued = time.perf_counter()
        self.trace = tracing.generation_trace(self.enqueued)
        self.last_token_at: float | None = None
        self._decoder = IncrementalDecoder(tokenizer, list(request.prompt_ids))
        self._base = len(request.prompt_text) if request.echo else 0
        self._text = ""
        self._sent = 0
        self._counted = 0  # tokens reported in chunks so far
        self._pending: list[TokenLogprob] = []
        self._stop_floor = 0  # stop strings count only if they end after this text index

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.cancelled

    @property
    def last_token(self) -> int:
        return self.generated[-1]

    def prompt_scored(self, logits: np.ndarray) -> None:
        """Echo: emit the prompt text, with its logprobs if asked.

        logits (prompt_tokens, vocab): the prefill logits of this sequence's real positions.
        """
        req = self.request
        scored: list[TokenLogprob] = []
        if req.logprobs is not None:
            logprobs = log_softmax(logits[:-1])
            offsets = _offsets(self.tokenizer, list(req.prompt_ids))
            for i, token_id in enumerate(req.prompt_ids):
                row = logprobs[i - 1] if i else None
                scored.append(
                    TokenLogprob(
                        self.tokenizer.token_text(token_id),
                        None if row is None else float(row[token_id]),
                        None if row is None else self._top(row),
                        offsets[i],
                    )
                )
        self._emit(Chunk(req.index, req.prompt_text, scored))
        if req.max_new_tokens == 0:
            self._finish("length")

    def sample(self, logits: np.ndarray) -> int:
        """Pick and append the next token from its (vocab,) logits (after the request's logit
        controls; logprobs stay those of the model); returns it."""
        if self.processor is None:
            token_id = self.sampler(logits)
        else:
            token_id = self.sampler(self.processor(logits))
            self.processor.observe(token_id)
        self.append(token_id, logits)
        return token_id

    def append(self, token_id: int, logits: np.ndarray) -> None:
        """Record a generated token, emit the text it makes safe, finish when a limit is met."""
        self.generated.append(token_id)
        self.last_token_at = time.perf_counter()
        if self.request.logprobs is not None:
            row = log_softmax(logits)
            self._pending.append(
                TokenLogprob(
                    self.tokenizer.token_text(token_id),
                    float(row[token_id]),
                    self._top(row),
                    self._base + len(self._text),
                )
            )
        self._text += self._decoder.push(token_id)
        if len(self.generated) < self.request.penalties.min_tokens:
            self._stop_floor = len(self._text)
        if token_id == self.tokenizer.eos_id and not self.request.ignore_eos:
            self._finish("stop")
        elif self._stopped_at() is not None:
            self._finish("stop")
        elif len(self.generated) >= self.request.max_new_tokens:
            self._finish("length")
        else:
            self._release(len(self._text) - self._held_back())

    def fail(self, error: ServiceError) -> None:
        """End the sequence with an error the HTTP layer reports."""
        self.finish_reason = "error"
        self._end_trace()
        self._emit(Chunk(self.request.index, error=error))

    def cancel(self) -> None:
        """The client is gone or its deadline passed: stop at the next step."""
        self.cancelled = True
        self._end_trace()

    def _end_trace(self) -> None:
        if self.trace is not None:
            self.trace.end(
                len(self.request.prompt_ids), len(self.generated), self.finish_reason or "cancelled"
            )

    def _top(self, row: np.ndarray) -> dict[str, float] | None:
        n = self.request.logprobs or 0
        return {self.tokenizer.token_text(t): lp for t, lp in top_logprobs(row, n)} if n else None

    def _stopped_at(self) -> int | None:
        """Index in the text where the first stop string starts, if any has appeared."""
        start = max(0, self._sent - max((len(s) for s in self.request.stop), default=0))
        found = [
            i
            for s in self.request.stop
            if (i := self._text.find(s, max(start, self._stop_floor - len(s) + 1))) >= 0
        ]
        return min(found) if found else None

    def _held_back(self) -> int:
        """Length of the longest text suffix that is a proper prefix of a stop string.

        Only the unsent text can start one (text was sent because no stop string could start
        in it), so the search is bounded by that length, not by the longest stop string.
        """
        unsent = self._text[self._sent :]
        longest = max((len(s) for s in self.request.stop), default=1) - 1
        for size in range(min(longest, len(unsent)), 0, -1):
            if any(unsent.endswith(s[:size]) for s in self.request.stop if len(s) > size):
                return size
        return 0

    def _finish(self, reason: FinishReason) -> None:
        stop_at = self._stopped_at()
        if stop_at is None:
            self._text += self._decoder.flush()
            stop_at = self._stopped_at()
        end = len(self._text) if stop_at is None else stop_at
        finish: FinishReason = "stop" if stop_at is not None else reason
        self.finish_reason = finish
        self._end_trace()
        if stop_at is not None:
            self._pending = [t for t in self._pending if t.offset - self._base < end]
        self._release(end, finish)

    def _release(self, end: int, finish: FinishReason | None = None) -> None:
        """Emit text up to `end` (and pending logprobs) when there is something new, with
        `finish`, the sequence's finish reason, when this is its last chunk."""
        text = self._text[self._sent : end] if end > self._sent else ""
        if not text and not self._pending and finish is None:
            return
        self._sent = max(self._sent, end)
        chunk = Chunk(self.request.index, text, self._pending, finish)
        self._pending = []
        self._emit(chunk)

    def _emit(self, chunk: Chunk) -> None:
        if not self.cancelled:
            chunk.new_tokens = len(self.generated) - self._counted
            self._counted = len(self.generated)
            self.outbox.put_nowait(chunk)


def _processor(request: ValidRequest, tokenizer: TextTokenizer) -> LogitsProcessor | None:
    """The request's logit controls, or None when they change nothing (the common case)."""
    if not request.penalties.changes_logits:
        return None
    eos = None if request.ignore_eos else tokenizer.eos_id
    return LogitsProcessor(request.penalties, request.prompt_ids, tokenizer.vocab_size, eos)


def _offsets(tokenizer: TextTokenizer, ids: list[int]) -> list[int]:
    """Character offset of each token in decode(ids)."""
    decoder = IncrementalDecoder(tokenizer, [])
    offsets, length = [], 0
    for token_id in ids:
        offsets.append(length)
        length += len(decoder.push(token_id))
    return offsets
