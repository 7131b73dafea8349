"""Service settings: one pydantic-settings class read from `NEUTRENO_*` environment variables.

Every knob the service has lives here so that start-up validates them all at once and fails with a
message naming the variable, instead of failing later inside a request.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, TypedDict

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Overrides(TypedDict, total=False):
    """Settings given on `neutreno serve`'s command line; the supervisor passes them to every
    process it starts, which reads the rest from the environment."""

    host: str
    port: int
    model_repository: Path


class Settings(BaseSettings):
    """Runtime configuration; `Settings()` reads the environment, tests pass fields directly."""

    model_config = SettingsConfigDict(env_prefix="NEUTRENO_", extra="ignore", frozen=True)

    model_repository: Path = Field(
        Path("model_repository"), description="folder of <model>/<version>/ bundles"
    )
    model_control: Literal["none", "explicit", "poll"] = Field(
        "none",
        description="as Triton: none = load at start only; explicit = the repository "
        "API loads and unloads; poll = reload changed folders every "
        "repository_poll_s",
    )
    repository_poll_s: float = Field(
        15.0, gt=0.0, le=86400.0, description="seconds between repository scans (poll mode)"
    )
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    grpc_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="the KServe v2 / Triton gRPC service (inference.GRPCInferenceService and "
        "grpc.health.v1.Health), served by every front end on this port; 0 = off",
    )
    grpc_max_metadata_bytes: int = Field(
        16384, ge=1024, le=1 << 20, description="a gRPC call's metadata (headers) limit"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto uses the CUDA execution provider when onnxruntime has it"
    )
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        le=256,
        description="HTTP front-end processes in front of the one engine "
        "process (default: the number of CPUs)",
    )
    intra_op_threads: int = Field(0, ge=0, le=256, description="ORT threads per model; 0 = ORT")
    fused_attention: bool = Field(
        True,
        description="run attention on ORT's fused kernels (export.fusion) and gate the "
        "similarity telemetry; false runs the bundles exactly as shipped",
    )

    max_batch_size: int = Field(32, ge=1, le=4096, description="1 turns dynamic batching off")
    batch_buckets: str = Field(
        "auto",
        pattern=r"^(auto|off|\d+(,\d+)*)$",
        description="batch sizes vision batches are padded up to, each warmed up at start "
        "(no first-run cost for a new shape): auto = powers of two up to "
        "max_batch_size on CUDA and off on CPU, off, or a list like 1,4,16,64",
    )
    max_queue_delay_ms: float | None = Field(
        None,
        ge=0.0,
        le=10_000.0,
        description="longest wait of the oldest queued request for batch-mates (a lone client "
        "never waits); unset: 2 ms on CUDA, where a fuller batch costs little more, and 0 on "
        "CPU, where it costs in proportion and requests batch up while the previous batch runs",
    )
    max_queue_size: int = Field(
        256, ge=1, le=1_000_000, description="queued requests per model beyond which 429"
    )
    request_timeout_s: float = Field(
        30.0, gt=0.0, le=3600.0, description="per-request deadline, 504 past it"
    )

    max_running_sequences: int = Field(
        16, ge=1, le=4096, description="sequences per LM decoded together (continuous batching)"
    )
    max_cached_tokens: int = Field(
        65536,
        ge=1,
        description="per LM: KV-cache tokens reserved by running sequences "
        "(prompt + max_tokens each)",
    )

    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="413 above this; also the gRPC message limit"
    )
    max_image_pixels: int = Field(
        2048 * 2048, ge=1, description="decoded width x height limit (decompression bombs)"
    )
    max_concurrent_images: int = Field(
        2, ge=1, le=256, description="images decoded or rendered at once (memory ceiling)"
    )
    max_overlay_pixels: int = Field(
        1024 * 1024,
        ge=1,
        description="segmentation overlays are rendered at most this large (aspect kept)",
    )
    max_response_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="/v2 infer (and gRPC ModelInfer) responses above this are refused (413)",
    )

    max_connections: int = Field(
        1024, ge=1, description="open HTTP connections; more are answered 503 and closed"
    )
    max_inflight_requests: int = Field(
        512, ge=1, description="requests handled at once; more get 503 (health probes exempt)"
    )
    header_timeout_s: float = Field(
        10.0, gt=0.0, le=3600.0, description="a request's headers must arrive within this"
    )
    body_timeout_s: float = Field(
        30.0, gt=0.0, le=3600.0, description="a request's body must arrive within this (408)"
    )
    keepalive_timeout_s: float = Field(
        5.0, ge=0.0, le=3600.0, description="idle keep-alive connections close after this"
    )
    send_timeout_s: float = Field(
        30.0,
        gt=0.0,
        le=3600.0,
        description="a client that reads nothing of a pending response for this long is "
        "disconnected (its buffered response freed)",
    )
    liveness_timeout_s: float = Field(
        30.0,
        gt=0.0,
        le=3600.0,
        description="/healthz fails once the engine has not answered a front end for this "
        "long beyond the client's own dead-engine bound, so an orchestrator restarts it",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated browser origins allowed to call the "
        "API cross-site (CORS); empty = none",
    )

    engines: int = Field(
        1, ge=1, le=64, description="engine processes per device (front ends pick the least loaded)"
    )
    cuda_devices: Annotated[list[int], NoDecode] = Field(
        default_factory=list,
        description="comma-separated GPU ids, NEUTRENO_ENGINES engines on each; "
        "empty = NEUTRENO_CUDA_DEVICE_ID alone",
    )
    cuda_device_id: int = Field(0, ge=0, description="GPU the engine uses")
    cuda_cudnn_conv_algo_search: Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"] = Field(
        "HEURISTIC",
        description="EXHAUSTIVE benchmarks every conv algorithm on each new shape "
        "(up to 0.8 s on the first run); HEURISTIC picks at once",
    )
    cuda_use_tf32: bool = Field(True, description="TF32 matmuls (about 1e-3 from fp32 logits)")
    cuda_arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] = "kNextPowerOfTwo"
    cuda_gpu_mem_limit_mb: int = Field(0, ge=0, description="ORT's CUDA arena limit; 0 = none")

    api_key: SecretStr | None = Field(None, description="Bearer token required on /v1 and /v2")
    similarity_sample_every: int = Field(
        8, ge=0, description="update neutreno_token_similarity from one batch in N; 0 = never"
    )
    warmup: bool = True
    drain_timeout_s: int = Field(30, ge=0, le=3600, description="SIGTERM grace period")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    log_format: Literal["text", "json"] = Field(
        "text", description="json: one object per line with request_id, trace_id, route, ..."
    )

    @field_validator("model_repository")
    @classmethod
    def _repository_exists(cls, path: Path) -> Path:
        if not path.is_dir():
            raise ValueError(f"model repository {str(path)!r} is not a directory")
        return path

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
        return value

    @field_validator("cuda_devices", mode="before")
    @classmethod
    def _split_devices(cls, value: object) -> object:
        if isinstance(value, str):
            return [int(d) for d in value.split(",") if d.strip()]
        return value

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_none(cls, key: SecretStr | None) -> SecretStr | None:
        return key if key is not None and key.get_secret_value() else None

    def engine_devices(self) -> list[int]:
        """The device id of each engine process: NEUTRENO_ENGINES per listed GPU (on a CPU
        host the id is unused)."""
        return [d for d in self.cuda_devices or [self.cuda_device_id] for _ in range(self.engines)]

    @property
    def cuda_provider_options(self) -> dict[str, str]:
        """CUDAExecutionProvider options (ORT's names) from the NEUTRENO_CUDA_* settings."""
        options = {
            "device_id": str(self.cuda_device_id),
            "cudnn_conv_algo_search": self.cuda_cudnn_conv_algo_search,
            "use_tf32": str(int(self.cuda_use_tf32)),
            "arena_extend_strategy": self.cuda_arena_extend_strategy,
        }
        if self.cuda_gpu_mem_limit_mb:
            options["gpu_mem_limit"] = str(self.cuda_gpu_mem_limit_mb * 1024 * 1024)
        return options

    def buckets(self, device: str) -> tuple[int, ...]:
        """Batch sizes a vision model on `device` pads its batches up to (empty: no padding)."""
        if self.batch_buckets == "off" or (self.batch_buckets == "auto" and device != "cuda"):
            return ()
        if self.batch_buckets == "auto":
            sizes = [1 << i for i in range(self.max_batch_size.bit_length())]
            return tuple(sorted({*sizes, self.max_batch_size}))
        return tuple(sorted({int(b) for b in self.batch_buckets.split(",") if int(b) > 0}))

    def queue_delay_s(self, device: str) -> float:
        """NEUTRENO_MAX_QUEUE_DELAY_MS in seconds for a model on `device` (see the field)."""
        if self.max_queue_delay_ms is not None:
            return self.max_queue_delay_ms / 1000.0
        return 0.002 if device == "cuda" else 0.0
