"""One generating sequence in the engine: token ids, its random generator and logit controls.

The engine deals in ids only: a sequence appends the ids the batch sampler picks, finishes on
EOS or at max_new_tokens, and reports each step as a `SeqOutput` (ids, logprobs when asked) for
the front end that asked, which turns ids into text and applies stop strings (and cancels the
sequence when one matches). `Sink` is where a run's outputs go: one call per front end per run,
on the model's thread (a sink that lives on an event loop wraps a `LoopMailbox`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from service import tracing
from service.engine.penalties import LogitsProcessor
from service.engine.sampling import log_softmax, top_logprobs
from service.messages import EngineFinish, GenerateRequest, SeqOutput

Sink = Callable[[list[SeqOutput]], None]


class EngineSequence:
    """Per-prompt generation state owned by the scheduler (stream `rid` of front end `sink`)."""

    def __init__(
        self, rid: int, request: GenerateRequest, sink: Sink, eos_id: int | None, vocab: int
    ) -> None:
        self.rid = rid
        self.request = request
        self.sink = sink
        self.eos_id = None if request.ignore_eos else eos_id
        self.rng = np.random.default_rng(request.sampling.seed)
        self.processor = (
            LogitsProcessor(request.penalties, request.prompt_ids, vocab, self.eos_id)
            if request.penalties.changes_logits
            else None
        )
        # its next id is the argmax of the raw logits, nothing else read from them
        self.greedy = (
            request.sampling.temperature == 0.0
            and self.processor is None
            and request.logprobs is None
        )
        self.generated: list[int] = []
        self.finish: EngineFinish | None = None
        self.cancelled = False
        self.enqueued = time.perf_counter()
        self.trace = tracing.generation_trace(self.enqueued)
        self.last_token_at: float | None = None
        self.queued_step = 0  # the scheduler's step count when it was queued
        self.released = False  # its cache reservation given back (it finished)

    @property
    def done(self) -> bool:
        return self.finish is not None or self.cancelled

    def output(self) -> SeqOutput:
        return SeqOutput(self.rid, self.request.index)

    def scored_prompt(self, logits: np.ndarray) -> SeqOutput:
        """Echo: the prompt's per-token logprobs (after the first token) if asked; finishes at
        once when no new token is wanted.

        logits (prompt_tokens, vocab): the prefill logits of this sequence's real positions.
        """
        req, out = self.request, self.output()
        out.prompt = []
        if req.logprobs is not None:
            rows = log_softmax(logits[:-1])
            out.prompt = [
                (float(row[token]), top_logprobs(row, req.logprobs))
                for row, token in zip(rows, req.prompt_ids[1:], strict=True)
            ]
        if req.max_new_tokens == 0:
            self._end("length")
            out.finish = "length"
        return out

    def accept(self, token_id: int, logits: np.ndarray | None, now: float) -> SeqOutput:
        """Record the sampled id (logits (vocab,): the model's own row, for logprobs) and say
        whether it ends the sequence (EOS, max_new_tokens)."""
        req, out = self.request, self.output()
        self.generated.append(token_id)
        self.last_token_at = now
        if self.processor is not None:
            self.processor.observe(token_id)
        out.tokens = [token_id]
        if req.logprobs is not None and logits is not None:
            row = log_softmax(logits)
            out.logprobs = [float(row[token_id])]
            out.top = [top_logprobs(row, req.logprobs)]
        if token_id == self.eos_id:
            self._end("stop")
        elif len(self.generated) >= req.max_new_tokens:
            self._end("length")
        out.finish = self.finish
        return out

    def fail(self, error: dict[str, object]) -> SeqOutput:
        """End with an error the front end reports (error in service.wire's form)."""
        self._end("error")
        out = self.output()
        out.finish, out.error = "error", error
        return out

    def cancel(self) -> None:
        """The client is gone, a stop string matched, or its deadline passed."""
        if not self.done:
            self.cancelled = True
            self._end_trace("cancelled")

    def _end(self, reason: EngineFinish) -> None:
        self.finish = reason
        self._end_trace(reason)

    def _end_trace(self, reason: str) -> None:
        if self.trace is not None:
            self.trace.end(len(self.request.prompt_ids), len(self.generated), reason)
