"""Engine step outputs (token ids) -> text chunks, in the front end that holds the connection.

vLLM's OutputProcessor: the engine sends ids; here each prompt's `OutputProcessor` detokenizes
incrementally, formats logprobs (token text, offsets), applies stop strings and min_tokens, and
holds back text that might be the start of a stop string until it is known not to be. A
`GenerationStream` is one completion request's prompts: the engine client feeds it the step
outputs it receives, and `chunks()` yields `Chunk`s for the HTTP layer, merging what piled up
while the client was slower than the engine into one chunk per prompt.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from service.errors import ServiceError
from service.frontend.generation.schemas import FinishReason
from service.frontend.generation.tokenizer import IncrementalDecoder, TextTokenizer
from service.frontend.generation.validation import ValidRequest
from service.messages import SeqOutput, TopLogprobs
from service.wire import error_from_wire


@dataclass
class TokenLogprob:
    """One token as OpenAI's legacy logprobs lists it; offset is into the choice's text."""

    token: str
    logprob: float | None
    top: dict[str, float] | None
    offset: int


@dataclass
class Chunk:
    """New output of one prompt: text, its tokens' logprobs, the finish reason when done."""

    index: int
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    error: ServiceError | None = None
    new_tokens: int = 0  # tokens generated since this prompt's previous chunk (usage)

    def merged(self, later: Chunk) -> Chunk:
        """This chunk followed by a later one of the same prompt."""
        return Chunk(
            self.index,
            self.text + later.text,
            self.logprobs + later.logprobs,
            later.finish_reason,
            later.error,
            self.new_tokens + later.new_tokens,
        )


class OutputProcessor:
    """Text, stop strings and logprobs of one prompt, fed the engine's outputs for it."""

    def __init__(self, request: ValidRequest, tokenizer: TextTokenizer) -> None:
        self.request = request
        self.tokenizer = tokenizer
        self.tokens = 0  # generated tokens consumed (usage)
        self.finish_reason: FinishReason | None = None
        self.stopped = False  # a stop string ended it before the engine did
        self.failed = False
        self._decoder = IncrementalDecoder(tokenizer, list(request.prompt_ids))
        self._base = len(request.prompt_text) if request.echo else 0
        self._text = ""
        self._sent = 0
        self._counted = 0
        self._pending: list[TokenLogprob] = []
        self._stop_floor = 0  # stop strings count only if they end after this text index

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.failed

    def process(self, out: SeqOutput) -> list[Chunk]:
        """The chunks one engine output makes (none when nothing new is safe to send)."""
        if self.done:
            return []
        chunks: list[Chunk] = []
        if out.prompt is not None:
            chunks.append(self._prompt(out.prompt))
        for i, token_id in enumerate(out.tokens):
            top = out.top[i] if out.top is not None else None
            logprob = out.logprobs[i] if out.logprobs is not None else None
            last = i == len(out.tokens) - 1
            chunk = self._append(token_id, logprob, top, out.finish if last else None)
            if chunk is not None:
                chunks.append(chunk)
            if self.finish_reason is not None:
                return chunks
        if out.finish in ("stop", "length") and self.finish_reason is None:  # echo, max_tokens 0
            chunk = self._finish(out.finish)
            chunks.append(chunk)
        return chunks

    def _prompt(self, scored: list[tuple[float, TopLogprobs]]) -> Chunk:
        """Echo: the prompt's text, with its logprobs if asked."""
        req = self.request
        tokens: list[TokenLogprob] = []
        if req.logprobs is not None:
            offsets = _offsets(self.tokenizer, list(req.prompt_ids))
            for i, token_id in enumerate(req.prompt_ids):
                logprob, top = scored[i - 1] if i else (None, None)
                tokens.append(
                    TokenLogprob(
                        self.tokenizer.token_text(token_id),
                        logprob,
                        None if top is None else self._top(top),
                        offsets[i],
                    )
                )
        return self._chunk(req.prompt_text, tokens, None)

    def _append(
        self, token_id: int, logprob: float | None, top: TopLogprobs | None, finish: str | None
    ) -> Chunk | None:
        """One generated id: text it makes safe, or the last chunk when it ends the prompt."""
        self.tokens += 1
        if logprob is not None:
            self._pending.append(
                TokenLogprob(
                    self.tokenizer.token_text(token_id),
                    logprob,
                    self._top(top) if self.request.logprobs else None,
                    self._base + len(self._text),
                )
            )
        self._text += self._decoder.push(token_id)
        if self.tokens < self.request.penalties.min_tokens:
            self._stop_floor = len(self._text)
        if self._stopped_at() is not None:
            self.stopped = finish is None
            return self._finish("stop")
        if finish in ("stop", "length"):
            return self._finish("stop" if finish == "stop" else "length")
        return self._release(len(self._text) - self._held_back())

    def _top(self, top: TopLogprobs | None) -> dict[str, float] | None:
        if not top:
            return None
        return {self.tokenizer.token_text(t): lp for t, lp in top}

    def _stopped_at(self) -> int | None:
        """Index in the text where the first stop string starts, if any has appeared."""
        stops = self.request.stop
        if not stops:
            return None
        start = max(0, self._sent - max(len(s) for s in stops))
        floor = self._stop_floor
        found = [i for s in stops if (i := self._text.find(s, max(start, floor - len(s) + 1))) >= 0]
        return min(found) if found else None

    def _held_back(self) -> int:
        """Length of the longest text suffix that is a proper prefix of a stop string.

        Only the unsent text can start one (text was sent because no stop string could start
        in it), so the search is bounded by that length, not by the longest stop string.
        """
        stops = self.request.stop
        if not stops:
            return 0
        unsent = self._text[self._sent :]
        longest = max(len(s) for s in stops) - 1
        for size in range(min(longest, len(unsent)), 0, -1):
            if any(unsent.endswith(s[:size]) for s in stops if len(s) > size):
                return size
        return 0

    def _finish(self, reason: FinishReason) -> Chunk:
        stop_at = self._stopped_at()
        if stop_at is None:
            self._text += self._decoder.flush()
            stop_at = self._stopped_at()
        end = len(self._text) if stop_at is None else stop_at
        finish: FinishReason = "stop" if stop_at is not None else reason
        self.finish_reason = finish
        if stop_at is not None:
            self._pending = [t for t in self._pending if t.offset - self._base < end]
        chunk = self._release(end, finish)
        assert chunk is not None  # a finish reason is always news
        return chunk

    def _release(self, end: int, finish: FinishReason | None = None) -> Chunk | None:
        """Text up to `end` (and pending logprobs) when there is something new, with
        `finish` when this is the prompt's last chunk."""
        text = self._text[self._sent : end] if end > self._sent else ""
        if not text and not self._pending and finish is None:
            return None
        self._sent = max(self._sent, end)
        pending, self._pending = self._pending, []
        return self._chunk(text, pending, finish)

    def _chunk(self, text: str, tokens: list[TokenLogprob], finish: FinishReason | None) -> Chunk:
        chunk = Chunk(self.request.index, text, tokens, finish)
        chunk.new_tokens, self._counted = self.tokens - self._counted, self.tokens
        return chunk


class GenerationStream:
    """One completion request's prompts as the front end sees them: the engine client feeds
    `deliver` (step outputs) or `fail`; routes read `chunks()`; `cancel()` frees the engine's
    sequences; `stop(index)` is called when a stop string ends prompt `index` first."""

    def __init__(
        self,
        requests: list[ValidRequest],
        tokenizer: TextTokenizer,
        cancel: Callable[[int | None], None],
    ) -> None:
        self.requests = requests
        self._processors = {r.index: OutputProcessor(r, tokenizer) for r in requests}
        self._cancel = cancel
        self._inbox: asyncio.Queue[list[SeqOutput] | ServiceError] = asyncio.Queue()
        self._cancelled = False
        self._closers: list[Callable[[], None]] = []

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call `callback` once, when the stream has ended (finished, failed or cancelled)."""
        self._closers.append(callback)

    def _closed(self) -> None:
        closers, self._closers = self._closers, []
        for callback in closers:
            callback()

    @property
    def completion_tokens(self) -> int:
        return sum(p.tokens for p in self._processors.values())

    @property
    def finished(self) -> bool:
        return all(p.done for p in self._processors.values())

    def deliver(self, outputs: list[SeqOutput]) -> None:
        self._inbox.put_nowait(outputs)

    def fail(self, error: ServiceError) -> None:
        self._inbox.put_nowait(error)

    def cancel(self) -> None:
        """The client is gone or the request is over: the engine frees what still runs."""
        if not self._cancelled and not self.finished:
            self._cancelled = True
            self._cancel(None)
        self._closed()

    async def chunks(self) -> AsyncIterator[Chunk]:
        """Chunks until every prompt has finished or failed; what piled up since the last
        read goes out as one chunk per prompt."""
        while not self.finished:
            items = [await self._inbox.get()]
            while not self._inbox.empty():
                items.append(self._inbox.get_nowait())
            for chunk in self._chunks_of(items):
                yield chunk
                if chunk.error is not None:
                    self._closed()
                    return
        self._closed()

    def _chunks_of(self, items: list[list[SeqOutput] | ServiceError]) -> list[Chunk]:
        merged: dict[int, Chunk] = {}
        for item in items:
            if isinstance(item, ServiceError):
                return [*merged.values(), *self._failed(item)]
            for out in item:
                for chunk in self._process(out):
                    early = merged.get(chunk.index)
                    merged[chunk.index] = chunk if early is None else early.merged(chunk)
                    if chunk.error is not None:
                        return list(merged.values())
        return list(merged.values())

    def _process(self, out: SeqOutput) -> list[Chunk]:
        processor = self._processors[out.index]
        if out.error is not None:
            return self._failed(error_from_wire(out.error), [out.index])
        chunks = processor.process(out)
        if processor.stopped:
            self._cancel(out.index)
        return chunks

    def _failed(self, error: ServiceError, indexes: list[int] | None = None) -> list[Chunk]:
        """An error chunk for each unfinished prompt (all of them when `indexes` is None)."""
        found = []
        for index, processor in self._processors.items():
            if (indexes is None or index in indexes) and not processor.done:
                processor.failed = True
                found.append(Chunk(index, error=error))
        return found


def _offsets(tokenizer: TextTokenizer, ids: list[int]) -> list[int]:
    """Character offset of each token in decode(ids)."""
    decoder = IncrementalDecoder(tokenizer, [])
    offsets, length = [], 0
    for token_id in ids:
        offsets.append(length)
        length += len(decoder.push(token_id))
    return offsets
