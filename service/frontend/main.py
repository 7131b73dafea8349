"""One HTTP front-end process: uvicorn serving `create_app` with an `MPClient` to the engine.

`DrainingServer` flips readiness to 503 the moment a stop signal arrives, lets uvicorn stop
accepting and wait up to NEUTRENO_DRAIN_TIMEOUT_S for in-flight requests, and exits 0 after a
clean drain (uvicorn re-raises the signal by default). Under the supervisor a front end ignores
SIGINT: Ctrl+C reaches the whole process group, and the supervisor answers it with one SIGTERM
per front end, so a second signal never turns the drain into a forced exit; a front end whose
supervisor is gone (killed outright) drains and exits too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn

from service.frontend.app import create_app
from service.frontend.client import connect
from service.frontend.connections import server_options
from service.logs import configure_logging, logging_config
from service.process import set_title
from service.settings import Overrides, Settings


class DrainingServer(uvicorn.Server):
    """uvicorn.Server with a readiness-first, exit-0 drain (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, app: Any, supervised: bool = False) -> None:
        super().__init__(config)
        self._service_app = app
        self._supervised = supervised
        self._parent = os.getppid()

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's 0.1 s tick: also drain and exit when the supervisor is gone (killed with
        SIGKILL, say), so no front end outlives it serving on the shared port."""
        if self._supervised and not self.should_exit and os.getppid() != self._parent:
            self.handle_exit(signal.SIGTERM, None)
        return await super().on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._supervised and sig == signal.SIGINT:
            return
        self._service_app.state.service.request_drain()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()  # drained cleanly: a normal exit, status 0


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    """The one uvicorn configuration of a front end."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=logging_config(settings.log_format, settings.log_level),
        timeout_graceful_shutdown=settings.drain_timeout_s,
        access_log=False,
        **server_options(settings),
    )


def frontend_main(
    overrides: Overrides, addresses: list[str], sock: socket.socket, index: int = 0
) -> None:
    """Process entry point (spawned by the supervisor) serving on the shared socket, with a
    client to every engine (`addresses`: their IPC sockets)."""
    set_title(f"front end {index}")
    settings = Settings(**overrides)
    configure_logging(settings)
    engine = connect(addresses, settings)
    app = create_app(settings, engine)
    DrainingServer(uvicorn_config(app, settings), app, supervised=True).run(sockets=[sock])
