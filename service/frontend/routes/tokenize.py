"""vLLM's `POST /tokenize` and `POST /detokenize` for the text-generation models: the bundle's
own tokenizer, so clients count and inspect tokens exactly as the model sees them.

Bounded as completions are: text longer than any prompt fitting the context, or more tokens
than the context holds, is a 413 before the tokenizer runs, and the tokenizer runs in a thread,
never on the event loop that answers every other request."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from service.frontend.generation.schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from service.frontend.generation.tokenizer import TextTokenizer
from service.frontend.generation.validation import (
    check_text_length,
    check_token_count,
    check_token_ids,
    check_unicode,
)
from service.frontend.routes.completions import generation_model
from service.frontend.routes.v1 import ERRORS
from service.frontend.security import require_api_key
from service.frontend.state import ServiceState, get_state

router = APIRouter(tags=["openai"], dependencies=[Depends(require_api_key)])
TOKENIZE_ERRORS: dict[int | str, dict[str, Any]] = {
    code: ERRORS[code] for code in (400, 401, 404, 413, 422, 503)
}


@router.post(
    "/tokenize",
    response_model=TokenizeResponse,
    responses=TOKENIZE_ERRORS,
    response_model_exclude_none=True,
    summary="Text to token ids (as vLLM)",
)
async def tokenize(
    body: TokenizeRequest, state: ServiceState = Depends(get_state)
) -> TokenizeResponse:
    _, front = generation_model(state, body.model)
    check_text_length(body.prompt, "prompt", front.limits)
    check_unicode(body.prompt, "prompt")
    ids, strs = await run_in_threadpool(
        _encode, front.tokenizer, body.prompt, body.add_special_tokens, body.return_token_strs
    )
    check_token_count(len(ids), "prompt", front.limits.context_length)
    return TokenizeResponse(
        count=len(ids), max_model_len=front.limits.context_length, tokens=ids, token_strs=strs
    )


def _encode(
    tok: TextTokenizer, text: str, special: bool, with_strs: bool
) -> tuple[list[int], list[str] | None]:
    """Token ids of `text` and, when asked, each token's text (run in a thread)."""
    ids = tok.encode(text, special)
    return ids, [tok.token_text(i) for i in ids] if with_strs else None


@router.post(
    "/detokenize",
    response_model=DetokenizeResponse,
    responses=TOKENIZE_ERRORS,
    summary="Token ids to text (as vLLM)",
)
async def detokenize(
    body: DetokenizeRequest, state: ServiceState = Depends(get_state)
) -> DetokenizeResponse:
    front = generation_model(state, body.model)[1]
    check_token_count(len(body.tokens), "tokens", front.limits.context_length)
    tok = front.tokenizer
    check_token_ids(body.tokens, tok, "tokens")
    return DetokenizeResponse(prompt=await run_in_threadpool(tok.decode, body.tokens))
