"""`create_app(settings, engine)`: one front end's FastAPI application and its lifespan.

Start-up (lifespan): connect to the engine (or, without one given, start an `EngineCore` in this
process, which loads and warms every bundle) and report ready once the engine has its models;
then serve gRPC on NEUTRENO_GRPC_PORT beside HTTP (service/frontend/grpc).
Shutdown: mark draining (readiness goes 503); uvicorn has already stopped accepting connections
and waited for in-flight requests by then, and the gRPC server, which stopped taking calls when
the drain began, waits for its calls in flight; an in-process engine then finishes its accepted
work.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from service import tracing
from service.engine.core import EngineCore
from service.errors import install_error_handlers
from service.frontend.client import EngineClient, InprocClient
from service.frontend.grpc.server import GrpcServer
from service.frontend.guards import install_guards
from service.frontend.hot_routes import HotRoutes, hot_routes
from service.frontend.middleware import (
    BodyLimitMiddleware,
    MetricsMiddleware,
    RequestLogMiddleware,
    TracingMiddleware,
)
from service.frontend.routes import completions, health, repository, tokenize, v1, v2
from service.frontend.state import ServiceState
from service.logs import access_ok_level
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("neutreno.service")

ROUTERS: list[APIRouter] = [
    health.router,
    v1.router,
    completions.router,
    tokenize.router,
    v2.router,
    v2.models,
    repository.router,
]
HOT_ENDPOINTS = (v1.classify, v1.segment, v2.infer)  # served past FastAPI's router (hot_routes)
STATIC = Path(__file__).parents[1] / "static"  # the web page at / (no build step)

DESCRIPTION = """Serves NeuTRENO transformer bundles (ONNX, one `ai.neutreno::FidelityAttention`
node per layer) with dynamic batching. Images go in as multipart `file` or JSON base64 `image`.
Errors are `{"error": {"type", "message"}}` (v1) or `{"error": "..."}` (v2)."""


def create_app(settings: Settings | None = None, engine: EngineClient | None = None) -> FastAPI:
    """The service as an ASGI app; `settings` defaults to the NEUTRENO_* environment and
    `engine` to an engine core in this process."""
    settings = settings or Settings()
    metrics = Metrics()
    state = ServiceState(settings, engine or InprocClient(EngineCore(settings, metrics)), metrics)

    grpc_server = GrpcServer(state)  # NEUTRENO_GRPC_PORT; nothing when it is 0

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.engine.start()
        await grpc_server.start()
        try:
            yield
        finally:
            state.draining = True
            await grpc_server.stop()  # gRPC calls in flight finish (it began at the drain)
            await state.engine.stop()

    app = FastAPI(
        title="NeuTRENO Serve", version="0.1.0", description=DESCRIPTION, lifespan=lifespan
    )
    app.state.service = state
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.router.middleware_stack = HotRoutes(
        app.router.middleware_stack, state, hot_routes(ROUTERS, HOT_ENDPOINTS)
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_api_route(
        "/", lambda: FileResponse(STATIC / "index.html"), methods=["GET"], include_in_schema=False
    )
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=state.settings.max_body_bytes,
        timeout_s=state.settings.body_timeout_s,
    )
    install_guards(app, state.settings)
    app.add_middleware(MetricsMiddleware, state=state)
    app.add_middleware(RequestLogMiddleware, ok_level=access_ok_level(state.settings.log_format))
    tracing.configure_from_env()
    if tracing.enabled():
        app.add_middleware(TracingMiddleware)
    return app
