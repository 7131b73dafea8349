"""Pydantic request and response models; their Field limits are the first line of validation."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# base64 of a 28x28 black PNG, used in the OpenAPI examples.
EXAMPLE_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAABwAAAAcCAAAAABXZoBIAAAAEElEQVR4nGNgGAWjYBQQAwAD"
    "LAABPwpG8wAAAABJRU5ErkJggg=="
)


class ErrorDetail(BaseModel):
    type: str = Field(examples=["invalid_image"])
    message: str = Field(examples=["truncated or corrupt PNG image: image file is truncated"])


class ErrorBody(BaseModel):
    """Every v1 error: `{"error": {"type", "message"}}`."""

    error: ErrorDetail


class ClassifyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top_k: int = Field(5, ge=1, le=1000, description="how many classes to return, best first")


class SegmentParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    overlay: bool = Field(False, description="also return a colour overlay PNG of the input")


class ImageField(BaseModel):
    image: str = Field(
        min_length=1, description="base64 image bytes (PNG, JPEG, ...)", examples=[EXAMPLE_PNG]
    )


class ClassifyRequest(ClassifyParams, ImageField):
    """JSON form of classify; multipart sends `file` (+ optional `top_k` field) instead."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"image": EXAMPLE_PNG, "top_k": 3}]}
    )


class SegmentRequest(SegmentParams, ImageField):
    """JSON form of segment; multipart sends `file` (+ optional `overlay` field) instead."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"image": EXAMPLE_PNG, "overlay": True}]}
    )


class Prediction(BaseModel):
    index: int
    label: str
    score: float = Field(description="softmax probability")


class ClassifyResponse(BaseModel):
    model: str
    predictions: list[Prediction]


class ClassFraction(BaseModel):
    index: int
    label: str
    pixel_fraction: float


class SegmentResponse(BaseModel):
    model: str
    width: int
    height: int
    mask_png: str = Field(description="base64 8-bit PNG at the input size, pixel = class index")
    classes: list[ClassFraction] = Field(description="classes present, largest first")
    overlay_png: str | None = Field(None, description="base64 RGB PNG, when overlay was asked")


class ModelCard(BaseModel):
    """An entry of GET /v1/models: OpenAI's model object plus the bundle's facts."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "neutreno"
    task: str
    version: str
    ready: bool
    attention: str | None = None
    lam: float | None = None
    labels: list[str] = Field(default_factory=list)
    inputs: list[dict[str, Any]] = Field(default_factory=list)
    outputs: list[dict[str, Any]] = Field(default_factory=list)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    models: dict[str, str] = Field(default_factory=dict, description="model -> ready or reason")
    reasons: list[str] = Field(default_factory=list)


# Open Inference Protocol (KServe v2) --------------------------------------------------------


class V2Tensor(BaseModel):
    name: str = Field(min_length=1, max_length=256)
    shape: list[int] = Field(max_length=16)
    datatype: str = Field(max_length=16)
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class V2RequestedOutput(BaseModel):
    name: str = Field(min_length=1, max_length=256)
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    id: str | None = Field(None, max_length=256)
    parameters: dict[str, Any] | None = None
    inputs: list[V2Tensor] = Field(min_length=1, max_length=64)
    outputs: list[V2RequestedOutput] | None = Field(None, max_length=64)


class V2TensorMeta(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str = "onnxruntime_onnx"
    inputs: list[V2TensorMeta]
    outputs: list[V2TensorMeta]


class V2Error(BaseModel):
    """Every /v2 error: the protocol's flat `{"error": "<message>"}`."""

    error: str


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class V2RepositoryEntry(BaseModel):
    """One model version in `POST /v2/repository/index`."""

    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: str | None = None
