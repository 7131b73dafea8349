"""Open Inference Protocol (KServe v2) routes, as spoken by tritonclient and KServe clients."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from service.errors import ModelNotReady
from service.frontend import oip
from service.frontend.infer import run_infer
from service.frontend.schemas import V2Error, V2InferRequest, V2ModelMetadata, V2ModelReady
from service.frontend.security import require_api_key
from service.frontend.state import ServiceState, get_state

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])
models = APIRouter(
    prefix="/v2/models/{name}",
    tags=["v2 (Open Inference Protocol)"],
    dependencies=[Depends(require_api_key)],
)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the protocol's flat `{"error": "..."}` bodies."""
    text = {
        400: "malformed request or tensors",
        401: "missing or wrong API key",
        403: "cross-site browser request",
        404: "unknown model",
        408: "body not received in time",
        413: "body, tokens or response too large",
        415: "form or text body",
        422: "invalid parameter",
        429: "queue full (see Retry-After)",
        503: "model not ready or inference failed",
        504: "deadline exceeded",
    }
    return {c: {"model": V2Error, "description": text[c]} for c in codes}


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its `$defs` references substituted (for openapi_extra)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        return [walk(v) for v in node] if isinstance(node, list) else node

    return walk(schema)


INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inlined(V2InferRequest.model_json_schema())},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "JSON header + binary tensors (Inference-Header-Content-Length)",
            },
        },
    }
}
INLINE_RESPONSE_BYTES = 1 << 20  # encoded on the event loop below this bound, in a thread above
INFER_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "output tensors",
        "content": {
            "application/json": {},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.get("/health/live", summary="Server liveness")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/health/ready",
    summary="Server readiness (every model loaded)",
    responses={
        503: {
            "description": "not ready",
            "content": {
                "application/json": {
                    "schema": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
                }
            },
        }
    },
)
async def ready(state: ServiceState = Depends(get_state)) -> JSONResponse:
    ok = not state.readiness()
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, object]:
    return {"name": "neutreno", "version": "1", "extensions": ["binary_tensor_data"]}


@models.get(
    "",
    response_model=V2ModelMetadata,
    summary="Model metadata",
    responses=error_responses(401, 404, 503),
)
@models.get("/versions/{version}", response_model=V2ModelMetadata, include_in_schema=False)
async def model_metadata(
    name: str, request: Request, state: ServiceState = Depends(get_state)
) -> V2ModelMetadata:
    return oip.metadata(state.model(name, version=request.path_params.get("version")))


@models.get(
    "/ready",
    summary="Model readiness",
    response_model=V2ModelReady,
    responses={
        **error_responses(401, 404),
        503: {"model": V2ModelReady, "description": "not ready"},
    },
)
@models.get("/versions/{version}/ready", include_in_schema=False)
async def model_ready(
    name: str, request: Request, state: ServiceState = Depends(get_state)
) -> JSONResponse:
    try:
        state.model(name, version=request.path_params.get("version"))
    except ModelNotReady:
        return JSONResponse({"name": name, "ready": False}, status_code=503)
    return JSONResponse({"name": name, "ready": True})


@models.post(
    "/infer",
    summary="Run the model on its own input tensors",
    responses={**INFER_OK, **error_responses(400, 401, 403, 404, 408, 413, 415, 429, 503, 504)},
    openapi_extra=INFER_BODY,
)
@models.post("/versions/{version}/infer", include_in_schema=False)
async def infer(name: str, request: Request, state: ServiceState = Depends(get_state)) -> Response:
    model = state.model(name, version=request.path_params.get("version"))
    req, binary = oip.parse_request(await request.body(), request.headers.get(oip.HEADER_LENGTH))
    outputs, size = await run_infer(state, model, req, binary)
    if size <= INLINE_RESPONSE_BYTES:
        body, header_length = oip.encode_response(model, req, outputs)
    else:  # large JSON encodings would stall the event loop
        body, header_length = await run_in_threadpool(oip.encode_response, model, req, outputs)
    if header_length is None:
        return Response(body, media_type="application/json")
    return Response(
        body,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(header_length)},
    )
