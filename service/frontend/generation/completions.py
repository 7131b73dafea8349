"""Generation chunks -> OpenAI completion objects: one JSON response, or SSE chunks.

Streaming follows OpenAI's legacy completions stream: `data: <chunk JSON>` events, each chunk a
`text_completion` object with partial choices, then `data: [DONE]`. With
`stream_options.include_usage` a last chunk carries `usage` and no choices. A failure after the
stream has started is sent as a `data: {"error": {...}}` event (the openai client raises it).

Every completion has a deadline, `NEUTRENO_REQUEST_TIMEOUT_S` after it arrived, as vision requests
do: past it the sequences are cancelled and the client gets 504 if nothing was sent yet (a
stream's first chunk is awaited before the response starts), else a final `deadline_exceeded`
error event before `data: [DONE]`; never a silent `finish_reason: length`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from service.errors import DeadlineExceeded, ServiceError
from service.frontend.generation.output import Chunk, GenerationStream, TokenLogprob
from service.frontend.generation.schemas import (
    Completion,
    CompletionChoice,
    CompletionRequest,
    FinishReason,
    Logprobs,
    Usage,
)

CLIENT_CLOSED = 499


def usage(submission: GenerationStream) -> Usage:
    """Token counts over every prompt of the request."""
    prompt = sum(len(r.prompt_ids) for r in submission.requests)
    completion = submission.completion_tokens
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def logprobs_of(tokens: list[TokenLogprob], wanted: bool) -> Logprobs | None:
    """OpenAI's parallel lists from per-token records (None when logprobs was not asked)."""
    if not wanted:
        return None
    return Logprobs(
        tokens=[t.token for t in tokens],
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=[t.top for t in tokens],
        text_offset=[t.offset for t in tokens],
    )


class CompletionWriter:
    """Builds the response objects of one request (shared id, created time and model)."""

    def __init__(self, body: CompletionRequest, model: str, timeout_s: float) -> None:
        self.body = body
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.timeout_s = timeout_s
        self.deadline = asyncio.get_running_loop().time() + timeout_s

    def completion(self, choices: list[CompletionChoice], usage: Usage | None) -> Completion:
        return Completion(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )

    async def timed(self, submission: GenerationStream) -> AsyncIterator[Chunk]:
        """The submission's chunks until the deadline, then DeadlineExceeded."""
        chunks = submission.chunks()
        while True:
            try:
                async with asyncio.timeout_at(self.deadline):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise DeadlineExceeded(
                    f"completion on {self.model!r} not finished within {self.timeout_s:.3g} s "
                    f"(NEUTRENO_REQUEST_TIMEOUT_S)"
                ) from None
            yield chunk

    async def collect(self, submission: GenerationStream) -> Completion:
        """Wait for every sequence; one choice per prompt, in prompt order."""
        texts = {r.index: "" for r in submission.requests}
        tokens: dict[int, list[TokenLogprob]] = {i: [] for i in texts}
        reasons: dict[int, FinishReason | None] = {i: None for i in texts}
        try:
            async for chunk in self.timed(submission):
                if chunk.error is not None:
                    raise chunk.error
                texts[chunk.index] += chunk.text
                tokens[chunk.index] += chunk.logprobs
                reasons[chunk.index] = chunk.finish_reason or reasons[chunk.index]
        except ServiceError:
            submission.cancel()
            raise
        wanted = self.body.logprobs is not None
        choices = [
            CompletionChoice(
                text=texts[i],
                index=i,
                logprobs=logprobs_of(tokens[i], wanted),
                finish_reason=reasons[i],
            )
            for i in sorted(texts)
        ]
        return self.completion(choices, usage(submission))

    async def open_stream(self, submission: GenerationStream) -> AsyncIterator[str]:
        """Wait for the first chunk, so that a failure or the deadline before any output is
        an HTTP error status; then the SSE events (see `stream`)."""
        chunks = self.timed(submission)
        try:
            first = await anext(chunks)
            if first.error is not None:
                raise first.error
        except BaseException:
            submission.cancel()
            raise
        return self.stream(submission, _chained(first, chunks))

    async def stream(
        self, submission: GenerationStream, chunks: AsyncIterator[Chunk]
    ) -> AsyncIterator[str]:
        """SSE events for every chunk, then usage (if asked) and [DONE]; an error or the
        deadline ends it with an error event before [DONE]; a client that goes away cancels
        the submission (its sequences leave the batch at the next step)."""
        wanted = self.body.logprobs is not None
        try:
            async for chunk in chunks:
                if chunk.error is not None:
                    yield _error_event(chunk.error)
                    break
                choice = CompletionChoice(
                    text=chunk.text,
                    index=chunk.index,
                    logprobs=logprobs_of(chunk.logprobs, wanted),
                    finish_reason=chunk.finish_reason,
                )
                yield _event(self.completion([choice], None).model_dump(mode="json"))
            else:
                options = self.body.stream_options
                if options is not None and options.include_usage:
                    yield _event(self.completion([], usage(submission)).model_dump(mode="json"))
        except DeadlineExceeded as exc:
            yield _error_event(exc)
        finally:
            submission.cancel()
        yield "data: [DONE]\n\n"


async def _chained(first: Chunk, rest: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    yield first
    async for chunk in rest:
        yield chunk


def _error_event(error: ServiceError) -> str:
    return _event({"error": {"type": error.type, "message": error.message}})


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def _disconnected(request: Request) -> None:
    """Return once the client has closed the connection (the body is already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def respond(
    writer: CompletionWriter, submission: GenerationStream, request: Request
) -> Completion | Response:
    """The non-streaming completion, or 499 if the client leaves first (sequences freed)."""
    result = asyncio.ensure_future(writer.collect(submission))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not result.done():
            result.cancel()
            submission.cancel()
    if result.done() and not result.cancelled():
        return result.result()
    return Response(status_code=CLIENT_CLOSED)
