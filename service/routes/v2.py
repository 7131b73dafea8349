"""Open Inference Protocol (KServe v2) routes, as spoken by tritonclient and KServe clients."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from service import oip
from service.errors import ModelNotReady
from service.schemas import V2ModelMetadata
from service.security import require_api_key
from service.state import ServiceState, get_state

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])
models = APIRouter(prefix="/v2/models/{name}", tags=["v2 (Open Inference Protocol)"],
                   dependencies=[Depends(require_api_key)])


@router.get("/health/live", summary="Server liveness")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Server readiness (every model loaded)")
async def ready(state: ServiceState = Depends(get_state)) -> JSONResponse:
    ok = not state.readiness()
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, object]:
    return {"name": "neutreno", "version": "1", "extensions": ["binary_tensor_data"]}


@models.get("", response_model=V2ModelMetadata, summary="Model metadata")
@models.get("/versions/{version}", response_model=V2ModelMetadata, include_in_schema=False)
async def model_metadata(name: str, state: ServiceState = Depends(get_state)) -> V2ModelMetadata:
    return oip.metadata(state.model(name))


@models.get("/ready", summary="Model readiness")
@models.get("/versions/{version}/ready", include_in_schema=False)
async def model_ready(name: str, state: ServiceState = Depends(get_state)) -> JSONResponse:
    try:
        state.model(name)
    except ModelNotReady:
        return JSONResponse({"name": name, "ready": False}, status_code=503)
    return JSONResponse({"name": name, "ready": True})


@models.post("/infer", summary="Run the model on its own input tensors")
@models.post("/versions/{version}/infer", include_in_schema=False)
async def infer(name: str, request: Request, state: ServiceState = Depends(get_state)) -> Response:
    model = state.model(name)
    req, binary = oip.parse_request(await request.body(), request.headers.get(oip.HEADER_LENGTH))
    feeds = oip.decode_inputs(model, req, binary)
    oip.batch_rows(feeds)
    outputs = await state.run(model, feeds)
    body, header_length = oip.encode_response(model, req, outputs)
    if header_length is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(header_length)})
