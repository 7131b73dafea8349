"""OpenAI-compatible `/v1/completions` request and response models.

Field constraints here are the schema rules (422 through the service's error map); rules that
need the tokenizer or the model's limits live in
`service.frontend.generation.validation` (400 / 413).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

MAX_STOP = 4
MAX_STOP_CHARS = 256
MAX_LOGPROBS = 5
MAX_PROMPTS = 64
MAX_LOGIT_BIAS = 300  # entries, as OpenAI allows
INT32_MAX = 2**31 - 1  # counts and ids travel to the engine as 32-bit integers at most

Prompt = str | list[str] | list[int] | list[list[int]]
FinishReason = Literal["stop", "length"]
# OpenAI parameters accepted only at their no-op values.
NEUTRAL: dict[str, tuple[object, ...]] = {"best_of": (None, 1), "suffix": (None, "")}


def _canonical_id(key: str) -> bool:
    """A logit_bias key as `str(int)` writes a token id: ASCII digits, no leading zero, at
    most 18 of them; so "5" and "05" cannot both name token 5 and add up past the bound."""
    return key.isascii() and key.isdigit() and len(key) <= 18 and key == str(int(key))


def unicode_problem(text: str, what: str) -> str | None:
    """Why `text` is not valid Unicode, or None: JSON may escape lone surrogates ("\\ud800"),
    which neither UTF-8 nor the engine's wire can carry."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"{what} is not valid Unicode: {exc.reason} at character {exc.start}"
    return None


def _check_text(text: str, what: str) -> None:
    """A schema rule (422): `text` is valid Unicode."""
    if (problem := unicode_problem(text, what)) is not None:
        raise ValueError(problem)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """The legacy OpenAI completions request; `top_k` is an extension (send it in extra_body)."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {
                    "model": "kjv-lm",
                    "prompt": "In the beginning",
                    "max_tokens": 32,
                    "temperature": 0,
                }
            ]
        },
    )

    model: str = Field(min_length=1, max_length=256)
    prompt: Prompt = Field(description="text, list of texts (one choice each) or token ids")
    max_tokens: int | None = Field(
        16, ge=0, le=INT32_MAX, description="None = up to the context length"
    )
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, le=INT32_MAX, description="0 = off")
    n: int = Field(1, description="only 1 is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    ignore_eos: bool = Field(False, description="extension (as in vLLM): generate past EOS")
    presence_penalty: float = Field(
        0.0, ge=-2.0, le=2.0, description="minus this for every token already generated"
    )
    frequency_penalty: float = Field(
        0.0, ge=-2.0, le=2.0, description="minus this times the token's count so far"
    )
    repetition_penalty: float = Field(
        1.0,
        gt=0.0,
        description=(
            "extension (as in vLLM): logits of prompt and output tokens divided by it (when "
            "positive) or multiplied (negative); 1 = off"
        ),
    )
    min_tokens: int = Field(
        0,
        ge=0,
        le=INT32_MAX,
        description="extension (as in vLLM): no EOS and no stop string before this many tokens",
    )
    logit_bias: dict[str, float] | None = Field(
        None,
        description=f"token id -> bias in [-100, 100] added to its logit "
        f"(at most {MAX_LOGIT_BIAS} entries)",
    )
    best_of: int | None = Field(None, description="only 1 is supported")
    suffix: str | None = Field(None, description="not supported")
    user: str | None = Field(None, max_length=256)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError(f"n must be 1 (got {n}); send a list of prompts for several choices")
        return n

    @field_validator("best_of", "suffix")
    @classmethod
    def _unsupported(cls, value: object, info: ValidationInfo) -> object:
        name = info.field_name
        assert name is not None  # pydantic names the field for every field validator
        if value not in NEUTRAL[name]:
            raise ValueError(f"{name} is not supported (leave it unset)")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt_shape(cls, prompt: Prompt) -> Prompt:
        if isinstance(prompt, list) and not prompt:
            raise ValueError("prompt list must not be empty")
        if (
            isinstance(prompt, list)
            and isinstance(prompt[0], (str, list))
            and len(prompt) > MAX_PROMPTS
        ):
            raise ValueError(f"at most {MAX_PROMPTS} prompts per request, got {len(prompt)}")
        return prompt

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        if not bias:
            return bias
        if len(bias) > MAX_LOGIT_BIAS:
            raise ValueError(f"logit_bias has {len(bias)} entries; at most {MAX_LOGIT_BIAS}")
        bad_keys = [k[:24] for k in bias if not _canonical_id(k)]
        if bad_keys:
            raise ValueError(
                "logit_bias keys must be token ids written as non-negative integers without "
                f"leading zeros (one key per token), got {bad_keys[:3]}"
            )
        out_of_range = [k for k, v in bias.items() if not -100.0 <= v <= 100.0]
        if out_of_range:
            raise ValueError(
                f"logit_bias values must be in [-100, 100]; token "
                f"{out_of_range[0]} has {bias[out_of_range[0]]}"
            )
        return bias

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(
                f"stop strings may have at most {MAX_STOP_CHARS} characters, got "
                f"{max(len(s) for s in stops)}"
            )
        for index, text in enumerate(stops):
            _check_text(text, f"stop string {index}")
        return stop

    @field_validator("model", "user", "suffix")
    @classmethod
    def _text(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            _check_text(value, str(info.field_name))
        return value

    @model_validator(mode="after")
    def _max_tokens_zero_needs_echo(self) -> CompletionRequest:
        if self.max_tokens == 0 and not self.echo:
            raise ValueError(
                "max_tokens must be at least 1 unless echo is true "
                "(echo with max_tokens 0 scores the prompt)"
            )
        return self

    @model_validator(mode="after")
    def _min_tokens_within_max_tokens(self) -> CompletionRequest:
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})"
            )
        return self

    def prompts(self) -> Sequence[str | list[int]]:
        """The prompts as a list: texts, or token-id lists (never a mix)."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if isinstance(p[0], int):
            return [p]
        return p

    def logit_bias_items(self) -> tuple[tuple[int, float], ...]:
        """logit_bias as (token id, bias) pairs, ascending ids."""
        return tuple(sorted((int(k), v) for k, v in (self.logit_bias or {}).items()))

    def stop_list(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class Logprobs(BaseModel):
    """OpenAI's legacy logprobs shape, one entry per token of `text`."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: Logprobs | None = None
    finish_reason: FinishReason | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    """A completion, or (streaming) one chunk of it: same object, partial choices."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TokenizeRequest(BaseModel):
    """vLLM's `POST /tokenize` (completions form)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"model": "kjv-lm", "prompt": "In the beginning"}]},
    )

    model: str = Field(min_length=1, max_length=256)
    prompt: str
    add_special_tokens: bool = Field(True, description="as vLLM; the shipped tokenizers add none")
    return_token_strs: bool = Field(False, description="also return each token's text")


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    """vLLM's `POST /detokenize`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"model": "kjv-lm", "tokens": [42, 7, 300]}]},
    )

    model: str = Field(min_length=1, max_length=256)
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str
