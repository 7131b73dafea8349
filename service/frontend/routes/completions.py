"""OpenAI-compatible text completion: `POST /v1/completions` (the legacy completions API)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from export.bundle import TEXT_GENERATION
from service.frontend.generation.completions import CompletionWriter, respond
from service.frontend.generation.schemas import Completion, CompletionRequest
from service.frontend.generation.validation import validate
from service.frontend.routes.v1 import ERRORS
from service.frontend.security import require_api_key
from service.frontend.state import GenerationFront, ServiceState, get_state
from service.logs import note_model
from service.messages import ModelInfo

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_api_key)])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
STREAM_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the completion; with stream true, Server-Sent Events of "
        "completion chunks ending in `data: [DONE]`",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def generation_model(state: ServiceState, name: str) -> tuple[ModelInfo, GenerationFront]:
    """A loaded text-generation model and its tokenizer and limits (404 / 400 / 503 otherwise)."""
    note_model(name)
    model = state.model(name, TEXT_GENERATION)
    return model, state.generation_front(model)


@router.post(
    "/completions",
    response_model=Completion,
    responses={**ERRORS, **STREAM_OK},
    summary="Complete a prompt (OpenAI-compatible; SSE when stream is true)",
)
async def completions(
    body: CompletionRequest, request: Request, state: ServiceState = Depends(get_state)
) -> Completion | Response:
    model, front = generation_model(state, body.model)
    writer = CompletionWriter(body, model.name, state.settings.request_timeout_s)
    submission = await state.generate(model, validate(body, front.tokenizer, front.limits))
    if body.stream:
        return StreamingResponse(
            await writer.open_stream(submission),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )
    return await respond(writer, submission, request)
