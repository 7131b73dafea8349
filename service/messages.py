"""What crosses between the front ends and the engine, as types both sides import.

- what a model offers: `TensorSpec`, `ModelInfo` (manifest facts front ends validate, decode and
  encode with; the engine's `ModelRuntime` extends it with the session);
- what a generation request asks of the engine: `GenerateRequest` (token ids, sampling and logit
  controls; never text: detokenization and stop strings live in the front end);
- what a generation step produced: `SeqOutput` (new token ids, their logprobs, a finish reason).

service/wire.py turns these into ZeroMQ frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

Feeds = dict[str, np.ndarray]  # a graph's tensors by name (inputs or outputs), batch axis 0
FinishReason = Literal["stop", "length"]
# engine-side finish: "error" carries an error in SeqOutput.error
EngineFinish = Literal["stop", "length", "error"]


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output as the manifest declares it; string dims are dynamic."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    @classmethod
    def from_manifest(cls, entry: dict[str, Any]) -> TensorSpec:
        return cls(entry["name"], tuple(entry["shape"]), entry["dtype"])

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)


class ModelInfo:
    """What a front end knows of a loaded bundle: its manifest facts and where it lives (the
    engine process owns the session; front ends validate, decode and encode with this)."""

    def __init__(self, path: Path, manifest: dict[str, Any], device: str) -> None:
        self.path = path
        self.manifest = manifest
        self.device = device
        self.name: str = manifest["name"]
        self.version: str = str(manifest["version"])
        self.task: str = manifest["task"]
        self.labels: list[str] = list(manifest.get("labels") or [])
        self.preprocessing: dict[str, Any] = dict(manifest.get("preprocessing") or {})
        self.inputs = [TensorSpec.from_manifest(e) for e in manifest["inputs"]]
        self.outputs = [TensorSpec.from_manifest(e) for e in manifest["outputs"]]

    def info_labels(self) -> list[str]:
        """Label values for neutreno_model_info after `model`."""
        return [
            self.version,
            self.task,
            str(self.manifest.get("attention", "")),
            str(self.manifest.get("lam", "")),
            self.device,
        ]


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 = greedy; top_k 0 and top_p 1 switch those filters off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class Penalties:
    """One request's logit controls; the defaults change nothing (service.engine.penalties)."""

    presence: float = 0.0
    frequency: float = 0.0
    repetition: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    min_tokens: int = 0

    @property
    def changes_logits(self) -> bool:
        return bool(
            self.presence
            or self.frequency
            or self.repetition != 1.0
            or self.logit_bias
            or self.min_tokens
        )


@dataclass(frozen=True)
class GenerateRequest:
    """One prompt as the engine runs it: prompt_ids (prompt_tokens,), at most max_new_tokens
    new ids; `logprobs` top entries per token when not None; `echo`: score the prompt too."""

    index: int
    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    sampling: SamplingParams = SamplingParams()
    logprobs: int | None = None
    echo: bool = False
    ignore_eos: bool = False
    penalties: Penalties = Penalties()

    @property
    def reserved_tokens(self) -> int:
        """Cache slots this sequence may fill: prompt + every token it may generate."""
        return len(self.prompt_ids) + self.max_new_tokens


TopLogprobs = list[tuple[int, float]]  # (token id, logprob), best first


@dataclass
class SeqOutput:
    """What one step produced for one sequence (request `index` of stream `rid`).

    tokens: new ids this step (usually one); logprobs/top: per new id when asked; prompt: the
    echoed prompt's per-token (logprob, top) after the first token, sent once at prefill (an
    empty list when echo was asked without logprobs); finish: set on the sequence's last output.
    """

    rid: int
    index: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    top: list[TopLogprobs] | None = None
    prompt: list[tuple[float, TopLogprobs]] | None = None
    finish: EngineFinish | None = None
    error: dict[str, Any] | None = None  # service.wire.error_to_wire form
