"""What the benchmarks share: request bodies, the wrk load generator and the markdown output,
so that every benchmark drives and reports a server the same way and a fix to one of them
reaches all (the server itself is started by bench/live_server.py, shared with the tests)."""

from __future__ import annotations

import base64
import io
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import NamedTuple, TypedDict

import numpy as np
import onnxruntime
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests/fixtures/fashion-mnist-test-200.npz"

# POSTs the JSON bodies of a file (one per line) round robin to a path. wrk passes the arguments
# after `--` as args[1..]: path, bodies file, a pause in ms (0: none) and "statuses" to count
# responses per status and 429s without Retry-After. `delay` and `response` are only defined when
# asked for: wrk routes every request through a timer once `delay` exists, and parses every
# response's headers for Lua once `response` does, which would cap the load it can offer.
WRK_LUA = r"""
local bodies, path, i = {}, nil, 0
statuses, retry_missing = {}, 0  -- globals: done() reads them from each thread with t:get
local threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function(args)
  path = args[1]
  local f = assert(io.open(args[2], "r"))
  for line in f:lines() do bodies[#bodies + 1] = line end
  f:close()
  local pause = tonumber(args[3] or "0")
  if pause > 0 then
    delay = function() return pause end
  end
  if args[4] == "statuses" then
    response = function(status, headers, body)
      statuses[status] = (statuses[status] or 0) + 1
      if status == 429 and headers["Retry-After"] == nil and headers["retry-after"] == nil then
        retry_missing = retry_missing + 1
      end
    end
  end
end
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, bodies[i])
end
done = function(summary, latency, requests)
  local merged, missing = {}, 0
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do merged[k] = (merged[k] or 0) + v end
    missing = missing + t:get("retry_missing")
  end
  local parts = {}
  for k, v in pairs(merged) do parts[#parts + 1] = string.format('"%d": %d', k, v) end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
    .. '"p999_us": %d, "max_us": %d, "non2xx": %d, "socket_errors": %d, "timeouts": %d, '
    .. '"retry_after_missing": %d, "statuses": {%s}}\n', summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, e.status, e.connect + e.read + e.write, e.timeout,
    missing, table.concat(parts, ", ")))
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


class WrkResult(TypedDict):
    """What one wrk run reports: WRK_LUA's RESULT line (times in microseconds) plus `rate`."""

    requests: int
    duration_us: int
    p50_us: int
    p90_us: int
    p99_us: int
    p999_us: int
    max_us: int
    non2xx: int
    socket_errors: int  # connect, read and write errors
    timeouts: int
    retry_after_missing: int  # 429s without Retry-After (counted with statuses=True)
    statuses: dict[int, int]  # responses per HTTP status (with statuses=True, else empty)
    rate: float  # requests per second


def run_wrk(
    url: str,
    path: str,
    files: WrkFiles,
    clients: int,
    seconds: float,
    pause_ms: int | None = None,
    threads: int = 1,
    *,
    timeout_s: float = 30.0,
    statuses: bool = False,
) -> WrkResult:
    """One wrk run of `clients` connections POSTing to url + path; with `pause_ms` each
    connection waits that long between requests (wrk `delay`), else it is a closed loop;
    `statuses` counts responses per status (costs wrk some speed). Returns the script's RESULT
    fields plus `rate` (WrkResult)."""
    cmd = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(clients),
        "-d",
        f"{seconds:g}s",
        "--timeout",
        f"{timeout_s:g}s",
        "-s",
        str(files.script),
        url,
        "--",
        path,
        str(files.bodies),
        str(pause_ms or 0),
        "statuses" if statuses else "",
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=True, timeout=seconds + timeout_s + 60
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    result: WrkResult = json.loads(line.removeprefix("RESULT "))
    result["statuses"] = {int(k): v for k, v in result["statuses"].items()}
    result["rate"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def failed(result: WrkResult) -> int:
    """Requests of a wrk run that got no 2xx: error statuses, socket errors and timeouts."""
    return result["non2xx"] + result["socket_errors"] + result["timeouts"]


def print_markdown(text: str, out: Path | None) -> None:
    """Print a benchmark's markdown and, when --out names a file, write it there too."""
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
