"""Model repository control (the Open Inference Protocol repository extension, as Triton and
KServe serve it): list every model version with its state, load (re-read) or unload a model.
Loading and unloading need NEUTRENO_MODEL_CONTROL=explicit; requests in flight finish."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.frontend.routes.v2 import error_responses
from service.frontend.schemas import V2RepositoryEntry
from service.frontend.security import require_api_key
from service.frontend.state import ServiceState, get_state

router = APIRouter(
    prefix="/v2/repository",
    tags=["v2 (Open Inference Protocol)"],
    dependencies=[Depends(require_api_key)],
)


@router.post(
    "/index",
    response_model=list[V2RepositoryEntry],
    response_model_exclude_none=True,
    summary="Every model version in the repository and its state",
    responses=error_responses(401, 503),
)
async def index(state: ServiceState = Depends(get_state)) -> list[dict[str, str]]:
    return await state.engine.control("index")


@router.post(
    "/models/{name}/load",
    summary="Load (or re-read) a model's folder",
    responses=error_responses(400, 401, 404, 503),
)
async def load(name: str, state: ServiceState = Depends(get_state)) -> dict[str, str]:
    await state.engine.control("load", name)
    return {}


@router.post(
    "/models/{name}/unload",
    summary="Stop serving a model",
    responses=error_responses(400, 401, 404, 503),
)
async def unload(name: str, state: ServiceState = Depends(get_state)) -> dict[str, str]:
    await state.engine.control("unload", name)
    return {}
