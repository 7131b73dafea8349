"""`neutreno serve`'s process tree: one engine process and NEUTRENO_WORKERS front ends.

The supervisor (the process `neutreno serve` runs as, PID 1 in the container) makes a private
run folder (the engine's IPC socket, the Prometheus multiprocess files), starts the engine, binds
the listening socket once and starts the front ends on it (the kernel spreads connections over
them, as uvicorn's own `--workers` does). It then watches: a front end that dies is replaced
(the others keep serving); an engine that dies takes the server down with exit status 1, so the
orchestrator restarts it. SIGTERM or SIGINT drains in order: the front ends stop accepting and
finish their in-flight requests (which the engine still serves), then the engine finishes what
it accepted, then the supervisor exits 0.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.process
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from types import FrameType

import uvicorn
from prometheus_client import multiprocess

from service.engine.server import engine_main
from service.frontend.main import frontend_main, uvicorn_config
from service.metrics import MULTIPROC_ENV
from service.process import set_title
from service.settings import Overrides, Settings

log = logging.getLogger("neutreno.service")

WATCH_EVERY_S = 0.2


class Supervisor:
    """Starts, watches and drains the engine and front-end processes."""

    def __init__(self, settings: Settings, overrides: Overrides) -> None:
        self.settings = settings
        self.overrides = overrides
        self.ctx = multiprocessing.get_context("spawn")
        self.stopping = False
        self.run_dir = Path(tempfile.mkdtemp(prefix="neutreno-"))
        self.address = f"ipc://{self.run_dir / 'engine.sock'}"
        self.stop_engine = self.ctx.Event()
        self.engine: multiprocessing.process.BaseProcess | None = None
        self.frontends: list[multiprocessing.process.BaseProcess] = []
        self.sock: socket.socket | None = None

    def run(self) -> int:
        """Serve until a stop signal (0 after a clean drain) or an engine failure (1)."""
        metrics_dir = self.run_dir / "metrics"
        metrics_dir.mkdir()
        os.environ[MULTIPROC_ENV] = str(metrics_dir)  # inherited by every child process
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        set_title("supervisor")
        try:
            self.engine = self.ctx.Process(
                target=engine_main,
                name="neutreno-engine",
                args=(self.overrides, self.address, self.stop_engine),
            )
            self.engine.start()
            self.sock = self._config().bind_socket()
            self.frontends = [self._start_frontend(i) for i in range(self.settings.workers)]
            log.info(
                "serving on http://%s:%d: %d front end(s), engine pid %d",
                self.settings.host,
                self.settings.port,
                self.settings.workers,
                self.engine.pid,
            )
            code = self._watch()
            self._drain()
            return code
        finally:
            if self.sock is not None:
                self.sock.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _config(self) -> uvicorn.Config:
        """The front ends' uvicorn configuration, here only to bind their socket."""
        return uvicorn_config("service.frontend.main:app", self.settings)

    def _start_frontend(self, index: int) -> multiprocessing.process.BaseProcess:
        proc = self.ctx.Process(
            target=frontend_main,
            name=f"neutreno-frontend-{index}",
            args=(self.overrides, self.address, self.sock, index),
        )
        proc.start()
        return proc

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _watch(self) -> int:
        """Replace dead front ends; return 1 when the engine dies, 0 when asked to stop."""
        assert self.engine is not None
        while not self.stopping:
            if not self.engine.is_alive():
                log.error(
                    "the engine process exited (status %s); stopping the server",
                    self.engine.exitcode,
                )
                return 1
            for i, proc in enumerate(self.frontends):
                if not proc.is_alive():
                    log.error(
                        "front end %s exited (status %s); starting a new one",
                        proc.name,
                        proc.exitcode,
                    )
                    multiprocess.mark_process_dead(proc.pid)
                    self.frontends[i] = self._start_frontend(i)
            time.sleep(WATCH_EVERY_S)
        return 0

    def _drain(self) -> None:
        """Front ends first (they finish their requests on the engine), then the engine."""
        grace = self.settings.drain_timeout_s + 5
        for proc in self.frontends:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self.frontends:
            proc.join(grace)
            if proc.is_alive():
                proc.kill()
        self.stop_engine.set()
        if self.engine is not None:
            self.engine.join(grace)
            if self.engine.is_alive():
                self.engine.kill()
        log.info("drained; exiting")
