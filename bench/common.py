"""What the benchmarks share: request bodies, a `neutreno serve` subprocess, the wrk load
generator and the markdown output, so that every benchmark starts, drives and reports a server
the same way and a fix to one of them reaches all."""

from __future__ import annotations

import base64
import io
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import httpx
import numpy as np
import onnxruntime
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests/fixtures/fashion-mnist-test-200.npz"

# POSTs the JSON bodies of a file (one per line) round robin to a path. wrk passes the arguments
# after `--` as args[1..]: path, bodies file and, optionally, a pause in ms; `delay` is only
# defined when a pause is given, since wrk routes every request through a timer once it exists.
WRK_LUA = r"""
local bodies, path, i = {}, nil, 0
init = function(args)
  path = args[1]
  local f = assert(io.open(args[2], "r"))
  for line in f:lines() do bodies[#bodies + 1] = line end
  f:close()
  if args[3] then
    local pause = tonumber(args[3])
    delay = function() return pause end
  end
end
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
    .. '"p999_us": %d, "max_us": %d, "non2xx": %d, "errors": %d}\n', summary.requests,
    summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def request_bodies(count: int) -> list[str]:
    """JSON classify bodies, one per fixture image (single-line, as the Lua reader expects)."""
    images = np.load(FIXTURE)["images"][:count]
    bodies = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img, "L").save(buf, format="PNG")
        bodies.append(json.dumps({"image": base64.b64encode(buf.getvalue()).decode(), "top_k": 1}))
    return bodies


def free_port() -> int:
    """A local TCP port nothing listens on now, for a server under test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    """CPU model, CPU count and runtime versions, so a table says where its numbers come from."""
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    return (
        f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"onnxruntime {onnxruntime.__version__}"
    )


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc/<pid>/stat): per-request
    server CPU is robust to other load on the machine, unlike wall time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants."""
    total = 0.0
    for p in process_tree(pid):
        try:
            total += process_cpu_seconds(p)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def serve_command(port: int | str) -> list[str]:
    """The `neutreno serve` command line on loopback at `port`, as benchmarks and tests run it."""
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


class Server:
    """`neutreno serve` in a subprocess on a free port, with the given NEUTRENO_* settings on top
    of the environment. `started` is read just before the process starts, for start-up times.
    Use as a context manager so the server is stopped however the benchmark ends."""

    def __init__(self, repository: Path, settings: dict[str, str], quiet: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "NEUTRENO_MODEL_REPOSITORY": str(repository),
            "NEUTRENO_LOG_LEVEL": "warning",
            **settings,
        }
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            serve_command(str(self.port)),
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL if quiet else None,
        )

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait(self, path: str = "/readyz", timeout: float = 300.0, interval: float = 0.1) -> float:
        """Poll GET `path` every `interval` s until it answers 200; seconds since the start."""
        while time.perf_counter() - self.started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.TransportError:
                pass
            time.sleep(interval)
        raise TimeoutError(f"server: no 200 from {path} within {timeout:g} s")

    def cpu_seconds(self) -> float:
        """User + system CPU time the server's processes have used so far."""
        return tree_cpu_seconds(self.proc.pid)

    def memory_mib(self) -> dict[str, float]:
        """Resident set size now (VmRSS) and the sum of each process's peak (VmHWM), MiB, over
        the server's processes, from /proc."""
        total = {"VmRSS": 0.0, "VmHWM": 0.0}
        for pid in process_tree(self.proc.pid):
            text = Path(f"/proc/{pid}/status").read_text()
            for key, kib in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.M):
                total[key] += int(kib) / 1024
        return total

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


class WrkFiles(NamedTuple):
    """The Lua script and the bodies file one wrk run reads."""

    script: Path
    bodies: Path


def write_wrk_files(directory: Path, bodies: list[str]) -> WrkFiles:
    """Write WRK_LUA and the bodies (one per line) into `directory`, for run_wrk."""
    files = WrkFiles(directory / "post.lua", directory / "bodies.jsonl")
    files.script.write_text(WRK_LUA)
    files.bodies.write_text("\n".join(bodies) + "\n")
    return files


def run_wrk(
    url: str,
    path: str,
    files: WrkFiles,
    clients: int,
    seconds: float,
    pause_ms: int | None = None,
    threads: int = 1,
) -> dict:
    """One wrk run of `clients` connections POSTing to url + path; with `pause_ms` each
    connection waits that long between requests (wrk `delay`), else it is a closed loop.
    Returns the script's RESULT fields (requests, duration_us, p50_us, p90_us, p99_us, p999_us,
    max_us, non2xx, errors) plus `rate`, requests per second."""
    cmd = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(clients),
        "-d",
        f"{seconds:g}s",
        "--timeout",
        "30s",
        "-s",
        str(files.script),
        url,
        "--",
        path,
        str(files.bodies),
    ]
    if pause_ms is not None:
        cmd.append(str(pause_ms))
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    result["rate"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def print_markdown(text: str, out: Path | None) -> None:
    """Print a benchmark's markdown and, when --out names a file, write it there too."""
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
