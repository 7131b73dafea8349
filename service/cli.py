"""`neutreno serve --host H --port P`: the service on uvicorn, with a draining SIGTERM.

On SIGTERM/SIGINT the service first reports not-ready (so a load balancer stops sending), then
uvicorn stops accepting connections, waits up to NEUTRENO_DRAIN_TIMEOUT_S for in-flight
requests, and runs the lifespan shutdown, which finishes every queued batch before exit.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from types import FrameType

import uvicorn
from pydantic import ValidationError

from service.app import create_app
from service.connections import server_options
from service.runtime import RuntimeSetupError, choose_providers
from service.settings import Settings


class DrainingServer(uvicorn.Server):
    """uvicorn.Server that flips readiness to 503 the moment a stop signal arrives and, once
    the drain has completed, exits 0 instead of re-raising the signal (uvicorn's default)."""

    def __init__(self, config: uvicorn.Config, app: object) -> None:
        super().__init__(config)
        self._service_app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._service_app.state.service.request_drain()  # type: ignore[attr-defined]
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()  # drained cleanly: a normal exit, status 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="neutreno serve", description=__doc__.splitlines()[0])
    p.add_argument("--host", help="bind address (default NEUTRENO_HOST or 0.0.0.0)")
    p.add_argument("--port", type=int, help="port (default NEUTRENO_PORT or 8000)")
    p.add_argument("--model-repository", help="bundle folder (default NEUTRENO_MODEL_REPOSITORY)")
    return p.parse_args(argv)


def load_settings(args: argparse.Namespace) -> Settings:
    """Environment settings with the command line's overrides, validated together."""
    overrides = {k: v for k, v in {"host": args.host, "port": args.port,
                                   "model_repository": args.model_repository}.items()
                 if v is not None}
    return Settings(**overrides)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = load_settings(args)
    except ValidationError as exc:
        for err in exc.errors():
            field = ".".join(map(str, err["loc"]))
            print(f"neutreno serve: invalid setting NEUTRENO_{field.upper()}: {err['msg']}",
                  file=sys.stderr)
        return 2
    try:
        choose_providers(settings.device)
    except RuntimeSetupError as exc:
        print(f"neutreno serve: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port,
                            log_level=settings.log_level,
                            timeout_graceful_shutdown=settings.drain_timeout_s,
                            access_log=False, **server_options(settings))
    DrainingServer(config, app).run()
    return 0
