"""Serving throughput benchmark: `neutreno bench serve`.

Starts `neutreno serve` twice on the same bundles, once with dynamic batching
(NEUTRENO_MAX_BATCH_SIZE > 1) and once without (1), and drives POST /v1/models/<model>/classify
(JSON base64 PNGs from the Fashion-MNIST test fixture) at each concurrency in a closed loop.
The load generator is `wrk` with a Lua script when it is installed (a C tool, so the client does
not compete with the server for the GIL), else a lean asyncio/httpx client. It prints (and with
--out writes) a markdown table of throughput, p50/p99 latency and mean server-side batch size,
with the batching-on/off throughput ratio per concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnxruntime
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests/fixtures/fashion-mnist-test-200.npz"

WRK_SCRIPT = """
local bodies = {}
local i = 0
init = function(args)
  local f = assert(io.open(args[1], "r"))
  for line in f:lines() do bodies[#bodies + 1] = line end
  f:close()
end
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "non2xx": %d, '
    .. '"errors": %d}\\n', summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), e.status, e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass
class Result:
    """One (mode, concurrency) measurement."""

    batching: bool
    clients: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    failures: int
    mean_batch: float
    cpu_ms: float  # server process CPU time per request: robust to other load on the machine

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def request_bodies(count: int) -> list[str]:
    """JSON classify bodies, one per fixture image (single-line, as the Lua reader expects)."""
    images = np.load(FIXTURE)["images"][:count]
    bodies = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img, "L").save(buf, format="PNG")
        bodies.append(json.dumps({"image": base64.b64encode(buf.getvalue()).decode(),
                                  "top_k": 1}))
    return bodies


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`neutreno serve` in a subprocess with the given NEUTRENO_* settings."""

    def __init__(self, repository: Path, settings: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "NEUTRENO_MODEL_REPOSITORY": str(repository),
               "NEUTRENO_LOG_LEVEL": "warning", **settings}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "neutreno.cli", "serve", "--host", "127.0.0.1", "--port",
             str(self.port)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError("server did not become ready")

    def batch_totals(self, model: str) -> tuple[float, float]:
        """(rows, batches) so far, from neutreno_batch_size's sum and count."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        found = {}
        for kind in ("sum", "count"):
            m = re.search(rf'neutreno_batch_size_{kind}{{model="{re.escape(model)}"}} (\S+)', text)
            found[kind] = float(m.group(1)) if m else 0.0
        return found["sum"], found["count"]

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def run_wrk(url: str, bodies_file: Path, script: Path, clients: int,
            seconds: float) -> tuple[int, float, float, float, int]:
    """(requests, seconds, p50 ms, p99 ms, failures) from one wrk run."""
    cmd = ["wrk", "-t", str(min(2, clients)), "-c", str(clients), "-d", f"{seconds:g}s",
           "--timeout", "30s", "-s", str(script), url, "--", str(bodies_file)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    r = json.loads(line.removeprefix("RESULT "))
    return (r["requests"], r["duration_us"] / 1e6, r["p50_us"] / 1e3, r["p99_us"] / 1e3,
            r["non2xx"] + r["errors"])


def run_python(url: str, bodies: list[str], clients: int,
               seconds: float) -> tuple[int, float, float, float, int]:
    """The same closed loop with asyncio + httpx (used when wrk is not installed)."""
    async def client(http: httpx.AsyncClient, stop: float, lat: list[float], k: int) -> int:
        failures = 0
        while time.perf_counter() < stop:
            t = time.perf_counter()
            r = await http.post(url, content=bodies[k % len(bodies)],
                                headers={"content-type": "application/json"})
            lat.append(time.perf_counter() - t)
            failures += r.status_code != 200
            k += clients
        return failures

    async def drive() -> tuple[int, float, float, float, int]:
        lat: list[float] = []
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(limits=limits, timeout=30) as http:
            start = time.perf_counter()
            fails = await asyncio.gather(*(client(http, start + seconds, lat, k)
                                           for k in range(clients)))
            elapsed = time.perf_counter() - start
        ms = np.asarray(lat) * 1e3
        return len(lat), elapsed, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), \
            sum(fails)

    return asyncio.run(drive())


def measure(server: Server, model: str, clients: list[int], seconds: float, batching: bool,
            load: callable) -> list[Result]:
    """Warm up, then one run per concurrency level against a running server."""
    load(8, min(2.0, seconds))
    results = []
    for c in clients:
        rows0, batches0 = server.batch_totals(model)
        cpu0 = server.cpu_seconds()
        n, elapsed, p50, p99, failures = load(c, seconds)
        cpu_ms = (server.cpu_seconds() - cpu0) * 1e3 / max(n, 1)
        rows1, batches1 = server.batch_totals(model)
        mean_batch = (rows1 - rows0) / max(1.0, batches1 - batches0)
        results.append(Result(batching, c, n, elapsed, p50, p99, failures, mean_batch, cpu_ms))
        print(f"  batching={'on ' if batching else 'off'} clients={c:>3}: "
              f"{n / elapsed:8.1f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
              f"batch {mean_batch:5.1f}  cpu {cpu_ms:5.2f} ms/req  failures {failures}",
              file=sys.stderr)
    return results


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), platform.processor())
    return (f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"onnxruntime {onnxruntime.__version__}")


def markdown(results: list[Result], args: argparse.Namespace, tool: str) -> str:
    """The results table plus the on/off throughput ratio per concurrency."""
    on = {r.clients: r for r in results if r.batching}
    off = {r.clients: r for r in results if not r.batching}
    lines = [
        f"Model `{args.model}` (POST /v1/models/{args.model}/classify, JSON base64 PNG 28x28), "
        f"{args.duration:g} s per point, load generator: {tool}.",
        f"Machine: {machine()}.",
        f"Batching on: NEUTRENO_MAX_BATCH_SIZE={args.max_batch_size}, "
        f"NEUTRENO_MAX_QUEUE_DELAY_MS={args.queue_delay_ms:g}; off: NEUTRENO_MAX_BATCH_SIZE=1.",
        "",
        "| clients | batching | req/s | p50 ms | p99 ms | p99/p50 | mean batch | server CPU ms/req "
        "| failures |",
        "| ---: | :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(results, key=lambda r: (r.clients, not r.batching)):
        lines.append(f"| {r.clients} | {'on' if r.batching else 'off'} | {r.throughput:.1f} | "
                     f"{r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.p99_ms / max(r.p50_ms, 1e-9):.2f} | "
                     f"{r.mean_batch:.1f} | {r.cpu_ms:.2f} | {r.failures} |")
    lines += ["", "| clients | throughput on / off | server CPU per request off / on |",
              "| ---: | ---: | ---: |"]
    for c in sorted(set(on) & set(off)):
        lines.append(f"| {c} | {on[c].throughput / max(off[c].throughput, 1e-9):.2f}x | "
                     f"{off[c].cpu_ms / max(on[c].cpu_ms, 1e-9):.2f}x |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="neutreno bench serve", description=__doc__.splitlines()[0])
    p.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    p.add_argument("--model", default="fashion-classifier")
    p.add_argument("--clients", default="1,8,32,64", help="comma-separated concurrency levels")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--queue-delay-ms", type=float, default=5.0,
                   help="NEUTRENO_MAX_QUEUE_DELAY_MS with batching on")
    p.add_argument("--threads", type=int, default=0, help="NEUTRENO_INTRA_OP_THREADS")
    p.add_argument("--tool", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument("--out", type=Path, help="also write the markdown table here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    clients = [int(c) for c in args.clients.split(",")]
    tool = "wrk" if args.tool == "wrk" or (args.tool == "auto" and shutil.which("wrk")) \
        else "python"
    bodies = request_bodies(64)
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        bodies_file, script = Path(tmp, "bodies.jsonl"), Path(tmp, "post.lua")
        bodies_file.write_text("\n".join(bodies) + "\n")
        script.write_text(WRK_SCRIPT)
        for batching in (True, False):
            size = args.max_batch_size if batching else 1
            server = Server(args.repository, {
                "NEUTRENO_MAX_BATCH_SIZE": str(size),
                "NEUTRENO_MAX_QUEUE_DELAY_MS": str(args.queue_delay_ms),
                "NEUTRENO_MAX_QUEUE_SIZE": str(max(256, 4 * max(clients))),
                "NEUTRENO_INTRA_OP_THREADS": str(args.threads)})
            try:
                server.wait_ready()
                url = f"{server.url}/v1/models/{args.model}/classify"

                def load(c: int, s: float) -> tuple[int, float, float, float, int]:
                    if tool == "wrk":
                        return run_wrk(url, bodies_file, script, c, s)
                    return run_python(url, bodies, c, s)

                results += measure(server, args.model, clients, args.duration, batching, load)
            finally:
                server.stop()
    table = markdown(results, args, tool)
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0
