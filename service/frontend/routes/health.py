"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.frontend.schemas import Health
from service.frontend.state import ServiceState, get_state

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness: every bundle loaded and warm",
    responses={503: {"model": Health, "description": "not ready, with reasons"}},
)
async def readyz(state: ServiceState = Depends(get_state)) -> JSONResponse:
    reasons = state.readiness()
    models = state.statuses()
    body = Health(status="unavailable" if reasons else "ok", models=models, reasons=reasons)
    return JSONResponse(body.model_dump(), status_code=503 if reasons else 200)


@router.get(
    "/metrics", summary="Prometheus metrics (text exposition format)", response_class=Response
)
async def metrics(state: ServiceState = Depends(get_state)) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
