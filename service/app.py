"""`create_app(settings)`: the FastAPI application and its lifespan.

Start-up (lifespan): check the device, load and validate every bundle (broken ones are recorded,
not fatal), warm each session up, start one worker per model, then report ready. Shutdown: mark
draining (readiness goes 503), let every worker finish its accepted work, close the sessions.
uvicorn has already stopped accepting connections and waited for in-flight requests by then.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from service.errors import install_error_handlers
from service.guards import install_guards
from service.middleware import BodyLimitMiddleware, MetricsMiddleware
from service.repository import load_repository
from service.routes import completions, health, v1, v2
from service.runtime import choose_providers
from service.settings import Settings
from service.state import WORKER_FACTORIES, ServiceState

log = logging.getLogger("neutreno.service")

ROUTERS: list[APIRouter] = [health.router, v1.router, completions.router, v2.router,
                            v2.models]
STATIC = Path(__file__).parent / "static"  # the web page at / (no build step)

DESCRIPTION = """Serves NeuTRENO transformer bundles (ONNX, one `ai.neutreno::FidelityAttention`
node per layer) with dynamic batching. Images go in as multipart `file` or JSON base64 `image`.
Errors are `{"error": {"type", "message"}}` (v1) or `{"error": "..."}` (v2)."""


async def start(state: ServiceState) -> None:
    """Load the repository and start a worker per model whose task has one."""
    choose_providers(state.settings.device)
    state.loop = asyncio.get_running_loop()
    state.repository = await run_in_threadpool(load_repository, state.settings)
    for name, model in state.models.items():
        state.metrics.set_model_info(name, model.info_labels())
        factory = WORKER_FACTORIES.get(model.task)
        if factory is not None:
            state.workers[name] = factory(model, state)
            state.workers[name].start()
    state.started = True
    log.info("serving %s; not loaded: %s", sorted(state.models), sorted(state.failures) or "none")


async def stop(state: ServiceState) -> None:
    """Drain: workers finish what they accepted, then sessions close."""
    state.draining = True
    for worker in state.workers.values():
        await worker.stop()
    if state.repository is not None:
        await run_in_threadpool(state.repository.close)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service as an ASGI app; `settings` defaults to the NEUTRENO_* environment."""
    state = ServiceState(settings or Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await start(state)
        try:
            yield
        finally:
            await stop(state)

    app = FastAPI(title="NeuTRENO Serve", version="0.1.0", description=DESCRIPTION,
                  lifespan=lifespan)
    app.state.service = state
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_api_route("/", lambda: FileResponse(STATIC / "index.html"), methods=["GET"],
                      include_in_schema=False)
    app.add_middleware(BodyLimitMiddleware, max_bytes=state.settings.max_body_bytes,
                       timeout_s=state.settings.body_timeout_s)
    install_guards(app, state.settings)
    app.add_middleware(MetricsMiddleware, state=state)
    return app
