"""Liveness, readiness and the Prometheus scrape endpoint.

Liveness is more than "the process answers": a front end whose engine has gone silent (the
client counts it dead after `MPClient.DEAD_AFTER_S`) and stays silent for
NEUTRENO_LIVENESS_TIMEOUT_S more fails /healthz, so an orchestrator restarts it instead of
leaving it up answering 503 to everything.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.frontend.schemas import Health
from service.frontend.state import ServiceState, get_state

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    response_model=Health,
    summary="Liveness: the process answers and hears from the engine",
    responses={503: {"model": Health, "description": "the engine has stayed silent"}},
)
async def healthz(request: Request, state: ServiceState = Depends(get_state)) -> JSONResponse:
    silent_s = _engine_silent_s(request, state)
    if silent_s > state.settings.liveness_timeout_s:
        reason = f"no answer from the engine for {silent_s:.0f} s after it was counted gone"
        body = Health(status="unavailable", reasons=[reason])
        return JSONResponse(body.model_dump(), status_code=503)
    return JSONResponse(Health(status="ok").model_dump())


def _engine_silent_s(request: Request, state: ServiceState) -> float:
    """Seconds since this front end first found the engine not answering (0 while it
    answers); kept on the app, since only probes look."""
    app_state = request.app.state
    now = time.monotonic()
    if state.engine.status() is not None:
        app_state.engine_silent_since = None
        return 0.0
    since = getattr(app_state, "engine_silent_since", None)
    if since is None:
        app_state.engine_silent_since = since = now
    return float(now - since)


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
