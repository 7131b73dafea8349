"""`neutreno serve`'s process tree: the engine processes and NEUTRENO_WORKERS front ends.

There are NEUTRENO_ENGINES engines per device (`Settings.engine_devices`: one set per id in
NEUTRENO_CUDA_DEVICES), each on its own IPC socket and each loading the whole repository; every
front end connects to all of them and sends each request to the least loaded.
The supervisor (the process `neutreno serve` runs as, PID 1 in the container) makes a private
run folder (the engines' IPC sockets, the Prometheus multiprocess files), starts the engines, binds
the listening socket once and starts the front ends on it (the kernel spreads connections over
them, as uvicorn's own `--workers` does). It then watches: a front end that dies is replaced
(the others keep serving); any engine that dies takes the server down with exit status 1, so the
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
        devices = settings.engine_devices()
        self.addresses = [f"ipc://{self.run_dir / f'engine-{i}.sock'}" for i in range(len(devices))]
        self.devices = devices
        self.stop_engine = self.ctx.Event()
        self.engines: list[multiprocessing.process.BaseProcess] = []
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
            self.engines = [self._start_engine(i) for i in range(len(self.devices))]
            self.sock = self._config().bind_socket()
            self.frontends = [self._start_frontend(i) for i in range(self.settings.workers)]
            log.info(
                "serving on http://%s:%d: %d front end(s), engine pid(s) %s",
                self.settings.host,
                self.settings.port,
                self.settings.workers,
                ", ".join(str(e.pid) for e in self.engines),
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

    def _start_engine(self, index: int) -> multiprocessing.process.BaseProcess:
        overrides = {**self.overrides, "cuda_device_id": self.devices[index]}
        proc = self.ctx.Process(
            target=engine_main,
            name=f"neutreno-engine-{index}",
            args=(overrides, self.addresses[index], self.stop_engine, f"engine {index}"),
        )
        proc.start()
        return proc

    def _start_frontend(self, index: int) -> multiprocessing.process.BaseProcess:
        proc = self.ctx.Process(
            target=frontend_main,
            name=f"neutreno-frontend-{index}",
            args=(self.overrides, self.addresses, self.sock, index),
        )
        proc.start()
        return proc

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _watch(self) -> int:
        """Replace dead front ends; return 1 when an engine dies, 0 when asked to stop."""
        while not self.stopping:
            for engine in self.engines:
                if not engine.is_alive():
                    log.error(
                        "the engine process %s exited (status %s); stopping the server",
                        engine.name,
                        engine.exitcode,
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
        for engine in self.engines:
            engine.join(grace)
            if engine.is_alive():
                engine.kill()
        log.info("drained; exiting")
