"""Validation before scheduling: a `CompletionRequest` becomes `ValidRequest`s or an error.

The scheduler accepts only `ValidRequest`, whose one constructor is `validate`, so every rule
that needs the tokenizer or the model's limits has run before anything is queued. Each rule has
its own message; oversize prompts are 413, other violations 400 (schema rules are 422 earlier).
"""

from __future__ import annotations

from dataclasses import dataclass

from service.errors import BadRequest, PayloadTooLarge
from service.frontend.generation.schemas import CompletionRequest, unicode_problem
from service.frontend.generation.tokenizer import TextTokenizer
from service.messages import GenerateRequest, Penalties, SamplingParams

CHARS_PER_TOKEN_LIMIT = 32  # a prompt longer than context * this is refused before tokenizing


@dataclass(frozen=True)
class ModelLimits:
    """What a prompt must fit: the graph's context and the scheduler's cache budget."""

    context_length: int
    max_cached_tokens: int

    @property
    def max_total_tokens(self) -> int:
        return min(self.context_length, self.max_cached_tokens)


@dataclass(frozen=True)
class ValidRequest:
    """One prompt of a request, checked and tokenized: what the scheduler runs.

    prompt_ids (prompt_tokens,) ids; max_new_tokens >= 0 (0 only with echo: score the prompt).
    """

    index: int
    prompt_text: str
    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    sampling: SamplingParams
    stop: tuple[str, ...]
    logprobs: int | None
    echo: bool
    ignore_eos: bool = False
    penalties: Penalties = Penalties()

    @property
    def reserved_tokens(self) -> int:
        """Cache slots this sequence may fill: prompt + every token it may generate."""
        return len(self.prompt_ids) + self.max_new_tokens

    def to_engine(self) -> GenerateRequest:
        """What the engine needs of it: ids and sampling, no text (stop strings stay here)."""
        return GenerateRequest(
            self.index,
            self.prompt_ids,
            self.max_new_tokens,
            self.sampling,
            self.logprobs,
            self.echo,
            self.ignore_eos,
            self.penalties,
        )


def check_unicode(text: str, what: str) -> None:
    """400 unless `text` is valid Unicode (`unicode_problem`)."""
    if (problem := unicode_problem(text, what)) is not None:
        raise BadRequest(problem)


def check_text_length(text: str, what: str, limits: ModelLimits) -> None:
    """413 when `text` has more characters than a prompt that fits the context could have
    (checked before tokenizing, whose cost grows with the text)."""
    limit = limits.context_length * CHARS_PER_TOKEN_LIMIT
    if len(text) > limit:
        raise PayloadTooLarge(
            f"{what} has {len(text)} characters; the limit is {limit} for a context of "
            f"{limits.context_length} tokens"
        )


def check_token_count(count: int, what: str, limit: int) -> None:
    """413 when `count` tokens exceed the `limit` of the model's context."""
    if count > limit:
        raise PayloadTooLarge(f"{what} has {count} tokens; the model's context is {limit} tokens")


def check_token_ids(ids: list[int], tokenizer: TextTokenizer, what: str) -> None:
    """400 when any id is outside the vocabulary."""
    bad = [t for t in ids if not 0 <= t < tokenizer.vocab_size]
    if bad:
        raise BadRequest(f"{what} has token ids outside [0, {tokenizer.vocab_size}): {bad[:5]}")


def _prompt_ids(
    prompt: str | list[int], index: int, tokenizer: TextTokenizer, limits: ModelLimits
) -> tuple[str, tuple[int, ...]]:
    """(text, ids) of one prompt; 413 when it cannot fit the context, 400 when unusable."""
    what = f"prompt {index}"
    if isinstance(prompt, str):
        check_text_length(prompt, what, limits)
        check_unicode(prompt, what)
        ids = tuple(tokenizer.encode(prompt))
    else:
        check_token_count(len(prompt), what, limits.max_total_tokens)
        check_token_ids(prompt, tokenizer, what)
        ids = tuple(prompt)
    if not ids:
        raise BadRequest(f"{what} is empty; it must contain at least one token")
    check_token_count(len(ids), what, limits.max_total_tokens)
    text = prompt if isinstance(prompt, str) else tokenizer.decode(list(ids))
    return text, ids


def _max_new_tokens(
    body: CompletionRequest, prompt_tokens: int, index: int, limits: ModelLimits
) -> int:
    room = limits.max_total_tokens - prompt_tokens
    if body.max_tokens is None:
        if room < 1 and not body.echo:
            raise BadRequest(
                f"prompt {index} has {prompt_tokens} tokens and fills the "
                f"{limits.max_total_tokens}-token context; nothing can be generated"
            )
        return room
    if body.max_tokens > room:
        raise BadRequest(
            f"prompt {index} has {prompt_tokens} tokens; with max_tokens "
            f"{body.max_tokens} that exceeds the model's context of "
            f"{limits.max_total_tokens} tokens (max_tokens <= {room} fits)"
        )
    return body.max_tokens


def _penalties(body: CompletionRequest, tokenizer: TextTokenizer) -> Penalties:
    """The request's logit controls; 400 when a logit_bias id is not in the vocabulary."""
    bias = body.logit_bias_items()
    check_token_ids([t for t, _ in bias], tokenizer, "logit_bias")
    return Penalties(
        body.presence_penalty,
        body.frequency_penalty,
        body.repetition_penalty,
        bias,
        body.min_tokens,
    )


def _check_min_tokens(min_tokens: int, max_new_tokens: int, index: int) -> None:
    """min_tokens beyond what the context lets prompt `index` generate is a 400."""
    if min_tokens > max_new_tokens:
        raise BadRequest(
            f"min_tokens ({min_tokens}) exceeds the {max_new_tokens} tokens "
            f"prompt {index} can generate within the model's context"
        )


def validate(
    body: CompletionRequest, tokenizer: TextTokenizer, limits: ModelLimits
) -> list[ValidRequest]:
    """Every prompt of `body` as a `ValidRequest`, or BadRequest / PayloadTooLarge."""
    sampling = SamplingParams(body.temperature, body.top_k, body.top_p, body.seed)
    penalties = _penalties(body, tokenizer)
    requests = []
    for index, prompt in enumerate(body.prompts()):
        text, ids = _prompt_ids(prompt, index, tokenizer, limits)
        max_new = _max_new_tokens(body, len(ids), index, limits)
        _check_min_tokens(penalties.min_tokens, max_new, index)
        requests.append(
            ValidRequest(
                index,
                text,
                ids,
                max_new,
                sampling,
                body.stop_list(),
                body.logprobs,
                body.echo,
                body.ignore_eos,
                penalties,
            )
        )
    return requests
