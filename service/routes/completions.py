"""OpenAI-compatible text completion: `POST /v1/completions` (the legacy completions API)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from service.errors import ModelNotReady
from service.generation.completions import CompletionWriter, respond
from service.generation.scheduler import GenerationScheduler
from service.generation.schemas import Completion, CompletionRequest
from service.generation.validation import validate
from service.routes.v1 import ERRORS
from service.logs import note_model
from service.security import require_api_key
from service.state import ServiceState, get_state

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_api_key)])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
STREAM_OK = {200: {"description": "the completion; with stream true, Server-Sent Events of "
                         "completion chunks ending in `data: [DONE]`",
                   "content": {"text/event-stream": {"schema": {"type": "string"}}}}}


def scheduler_for(state: ServiceState, name: str) -> GenerationScheduler:
    """The generation worker of a loaded text-generation model (404 / 400 / 503 otherwise)."""
    note_model(name)
    model = state.model(name, "text-generation")
    worker = state.workers.get(model.name)
    if not isinstance(worker, GenerationScheduler):
        raise ModelNotReady(f"model {name!r} has no running generation worker")
    return worker


@router.post("/completions", response_model=Completion, responses={**ERRORS, **STREAM_OK},
             summary="Complete a prompt (OpenAI-compatible; SSE when stream is true)")
async def completions(body: CompletionRequest, request: Request,
                      state: ServiceState = Depends(get_state)) -> Completion | Response:
    scheduler = scheduler_for(state, body.model)
    writer = CompletionWriter(body, scheduler.name, state.settings.request_timeout_s)
    submission = scheduler.submit(validate(body, scheduler.tokenizer, scheduler.limits))
    if body.stream:
        return StreamingResponse(await writer.open_stream(submission),
                                 media_type="text/event-stream", headers=SSE_HEADERS)
    return await respond(writer, submission, request)
