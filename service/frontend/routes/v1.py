"""v1 REST API: model listing, classification and segmentation."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from export.bundle import CLASSIFICATION, SEGMENTATION
from service.frontend import vision
from service.frontend.schemas import (
    ClassifyParams,
    ClassifyRequest,
    ClassifyResponse,
    ErrorBody,
    ModelCard,
    ModelList,
    SegmentParams,
    SegmentRequest,
    SegmentResponse,
)
from service.frontend.security import require_api_key
from service.frontend.state import ServiceState, get_state

router = APIRouter(prefix="/v1", tags=["v1"], dependencies=[Depends(require_api_key)])

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "invalid image or request",
        401: "missing or wrong API key",
        403: "cross-site browser request",
        404: "unknown model",
        408: "body not received in time",
        413: "body or decoded image too large",
        415: "unsupported content type",
        422: "parameter out of range",
        429: "queue full (see Retry-After)",
        503: "model not ready or inference failed",
        504: "deadline exceeded",
    }.items()
}


def _image_body(json_model: type[BaseModel], form_model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI request body: JSON with base64 `image`, or multipart with a `file` part."""
    form = form_model.model_json_schema()
    form["properties"] = {"file": {"type": "string", "format": "binary"}, **form["properties"]}
    form["required"] = ["file"]
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": json_model.model_json_schema()},
                "multipart/form-data": {"schema": form},
            },
        }
    }


@router.get(
    "/models",
    response_model=ModelList,
    summary="List models (OpenAI-compatible)",
    responses={401: ERRORS[401]},
)
async def list_models(state: ServiceState = Depends(get_state)) -> ModelList:
    ready = not state.draining and state.started
    cards = [
        ModelCard(
            id=m.name,
            created=int(m.path.stat().st_mtime),
            task=m.task,
            version=m.version,
            ready=ready,
            attention=m.manifest.get("attention"),
            lam=m.manifest.get("lam"),
            labels=m.labels,
            inputs=m.manifest["inputs"],
            outputs=m.manifest["outputs"],
        )
        for m in state.models.values()
    ]
    return ModelList(data=cards)


@router.post(
    "/models/{name}/classify",
    response_model=ClassifyResponse,
    responses=ERRORS,
    summary="Classify an image",
    openapi_extra=_image_body(ClassifyRequest, ClassifyParams),
)
async def classify(
    name: str, request: Request, state: ServiceState = Depends(get_state)
) -> ClassifyResponse:
    model = state.model(name, CLASSIFICATION)
    data, params = await vision.read_image_request(request, ClassifyRequest, ClassifyParams)
    return await vision.classify(state, model, data, params.top_k)


@router.post(
    "/models/{name}/segment",
    response_model=SegmentResponse,
    responses=ERRORS,
    response_model_exclude_none=True,
    summary="Segment an image",
    openapi_extra=_image_body(SegmentRequest, SegmentParams),
)
async def segment(
    name: str, request: Request, state: ServiceState = Depends(get_state)
) -> SegmentResponse:
    model = state.model(name, SEGMENTATION)
    data, params = await vision.read_image_request(request, SegmentRequest, SegmentParams)
    return await vision.segment(state, model, data, params.overlay)
