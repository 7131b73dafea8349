"""A live server in a subprocess, as benchmarks and tests start one: `neutreno serve` (or, for
the peer comparison, another system's server) on a free loopback port, its output captured in a
log file, waited for with a deadline, signalled, stopped, and measured from /proc.

Benchmarks and tests share this one launcher so that a server is started, waited for and
stopped the same way everywhere, and a failure to start always says why (the log's tail).
It lives in bench/ because benchmarks may not import tests/; tests import it from here.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
LOG_TAIL_CHARS = 4000
# /readyz reasons that mean start-up is still under way rather than failed: the engine binds
# its socket and then loads bundles, while the front ends start beside it.
STARTING = ("models are still loading", "the engine is not answering")


def free_port() -> int:
    """A local TCP port nothing listens on now, for a server under test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(port: int | str) -> list[str]:
    """The `neutreno serve` command line on loopback at `port`: this interpreter runs the
    package from the source tree, so the server is the code under test."""
    return [
        sys.executable,
        "-m",
        "neutreno.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants that are alive now (`neutreno serve` runs an engine
    and front ends under its supervisor; Ray runs several processes too)."""
    found, pending = [], [pid]
    while pending:
        p = pending.pop()
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        found.append(p)
        pending += [int(c) for c in children]
    return found


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc/<pid>/stat): per-request
    server CPU is robust to other load on the machine, unlike wall time."""
    return _stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def thread_cpu_seconds(pid: int, tid: int) -> float:
    """User + system CPU time one thread of a process has used so far (its main thread when
    `tid` is `pid`)."""
    return _stat_cpu_seconds(Path(f"/proc/{pid}/task/{tid}/stat"))


def _stat_cpu_seconds(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants."""
    total = 0.0
    for p in process_tree(pid):
        try:
            total += process_cpu_seconds(p)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def tree_memory_mib(pid: int) -> dict[str, float]:
    """Resident set size now (VmRSS) and the sum of each process's peak (VmHWM), MiB, over a
    process and its descendants, from /proc."""
    total = {"VmRSS": 0.0, "VmHWM": 0.0}
    for p in process_tree(pid):
        try:
            text = Path(f"/proc/{p}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for key, kib in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.M):
            total[key] += int(kib) / 1024
    return total


class LiveServer:
    """`neutreno serve` in a subprocess on a free loopback port, serving `repository` with the
    NEUTRENO_* (or any other) `settings` on top of this process's environment and a warning log
    level unless `settings` say otherwise.

    Output (stdout and stderr) goes to `log`, or to a file in a temporary folder removed with
    this object: a chatty server never blocks on a full pipe, and `output()` reads it while the
    server runs and after it stopped. Use as a context manager, or call `stop()` in a
    `finally`, so the server is stopped however the caller ends. Signals go to the server
    process alone (the supervisor), so tests see how it treats its children.
    """

    def __init__(
        self,
        repository: Path,
        settings: Mapping[str, str] | None = None,
        *,
        log: Path | None = None,
        tree: Path = ROOT,
    ) -> None:
        port = free_port()
        env = {
            "NEUTRENO_MODEL_REPOSITORY": str(repository),
            "NEUTRENO_LOG_LEVEL": "warning",
            # its own gRPC port: servers side by side never share 8001 through SO_REUSEPORT
            "NEUTRENO_GRPC_PORT": str(free_port()),
            **(settings or {}),
        }
        self._start("neutreno serve", serve_command(port), port, env, log, group=False, tree=tree)

    @classmethod
    def command(
        cls,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        log: Path | None = None,
    ) -> LiveServer:
        """Another system's server (the peer comparison): `argv` with "{port}" replaced by a
        free port, `env` on top of this process's environment. It runs in a process group of
        its own that `stop()` signals whole, since such servers may leave helpers behind."""
        server = cls.__new__(cls)
        port = free_port()
        args = [a.replace("{port}", str(port)) for a in argv]
        server._start(name, args, port, dict(env), log, group=True)
        return server

    def _start(
        self,
        name: str,
        argv: list[str],
        port: int,
        env: dict[str, str],
        log: Path | None,
        *,
        group: bool,
        tree: Path = ROOT,
    ) -> None:
        """Start `argv` in `tree` (a checkout; this one by default) now; the log goes to `log`
        or to a temporary folder this object owns."""
        self.name, self.port, self.group = name, port, group
        self.url = f"http://127.0.0.1:{port}"
        if log is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="live-server-")
            log = Path(self._tmp.name) / "server.log"
        self.log = log
        self.started = time.perf_counter()
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                env={**os.environ, **env},
                cwd=tree,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=group,
            )

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def output(self) -> str:
        """Everything the server has written so far."""
        return self.log.read_text(errors="replace")

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        """The end of the output, for error messages."""
        return self.output()[-chars:]

    def wait_until(
        self, check: Callable[[], bool], what: str, timeout: float = 120.0, interval: float = 0.05
    ) -> float:
        """Call `check` every `interval` s until it returns true (a refused connection counts as
        false); seconds since the process started. Raises, with the log's tail, when the server
        exits first or `timeout` s pass."""
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} while waiting for {what}:\n"
                    f"{self.log_tail()}"
                )
            try:
                if check():
                    return time.perf_counter() - self.started
            except httpx.TransportError:
                pass
            if time.perf_counter() - self.started > timeout:
                raise TimeoutError(
                    f"{self.name}: no {what} within {timeout:g} s of its start:\n{self.log_tail()}"
                )
            time.sleep(interval)

    def wait_ready(
        self, timeout: float = 120.0, *, ready: bool = True, interval: float = 0.05
    ) -> float:
        """Seconds from process start until start-up finished: /readyz 200 when `ready`, else
        /readyz answering with start-up over (a repository with broken bundles never gets
        ready). With `ready`, a server that finished starting but is not ready raises at once,
        with /readyz's reasons and the log's tail."""

        def started() -> bool:
            r = httpx.get(self.url + "/readyz", timeout=2.0)
            if r.status_code == 200:
                return True
            reasons = r.json().get("reasons", [])
            if any(reason in STARTING for reason in reasons):
                return False
            if ready:
                raise RuntimeError(
                    f"{self.name} started but is not ready: {reasons}\n{self.log_tail()}"
                )
            return True

        return self.wait_until(started, "/readyz 200" if ready else "start-up", timeout, interval)

    def send_signal(self, sig: int) -> None:
        """Send `sig` to the server process (the supervisor, not its children)."""
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL to the server process alone: its children must notice on their own."""
        self.proc.kill()

    def wait(self, timeout: float = 60.0) -> int:
        """The exit status, once the process has exited (TimeoutExpired after `timeout` s)."""
        return self.proc.wait(timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send `sig` (SIGTERM: drain and exit) unless it has exited already, wait up to
        `timeout` s, then SIGKILL; the exit status. Safe to call more than once."""
        if self.proc.poll() is None:
            self._signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            return self.proc.wait(timeout=10)

    def _signal(self, sig: int) -> None:
        if self.group:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
        else:
            self.proc.send_signal(sig)

    def role_pids(self, role: str) -> list[int]:
        """Processes of this server named by role (`ps` shows `neutreno: engine 0 (cpu)`,
        `neutreno: front end 1`; service/process.py), by role prefix, in pid order."""
        found = []
        for pid in sorted(process_tree(self.proc.pid)):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:  # gone meanwhile
                continue
            if cmdline.startswith(f"neutreno: {role}".encode()):
                found.append(pid)
        return found

    def cpu_seconds(self) -> float:
        """User + system CPU time the server's processes have used so far."""
        return tree_cpu_seconds(self.proc.pid)

    def memory_mib(self) -> dict[str, float]:
        """VmRSS now and the sum of VmHWM peaks, MiB, over the server's processes (supervisor,
        engine and front ends)."""
        return tree_memory_mib(self.proc.pid)

    def _families(self) -> list[Metric]:
        """The metric families of one scrape of the server's /metrics."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return list(text_string_to_metric_families(text))

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """(labels, value) of every sample of metric family `name` (without _total etc.) on
        the server's /metrics."""
        return [
            (s.labels, s.value)
            for fam in self._families()
            if fam.name == name
            for s in fam.samples
            if s.name.startswith(name)
        ]

    def metric(self, sample: str, **labels: str) -> float:
        """Sum of the /metrics samples named `sample` (e.g. neutreno_batch_size_count) whose
        labels include `labels`; 0 when there is none."""
        return sum(
            s.value
            for fam in self._families()
            for s in fam.samples
            if s.name == sample and labels.items() <= s.labels.items()
        )

    def batch_totals(self, model: str) -> tuple[float, float]:
        """(rows, batches) the engine has run for `model` so far: neutreno_batch_size's sum and
        count."""
        return (
            self.metric("neutreno_batch_size_sum", model=model),
            self.metric("neutreno_batch_size_count", model=model),
        )

    def status_counts(self) -> dict[str, float]:
        """Responses by HTTP status so far, summed over models and endpoints, from the
        server's own neutreno_requests_total: every response it sent, whoever the client."""
        counts: dict[str, float] = {}
        for labels, value in self.samples("neutreno_requests"):
            if "status" in labels:
                counts[labels["status"]] = counts.get(labels["status"], 0.0) + value
        return counts

    def count_5xx(self) -> int:
        """Responses with a 5xx status so far."""
        return int(sum(v for s, v in self.status_counts().items() if s.startswith("5")))
