"""Soak: `neutreno bench soak` (not CI; 10 minutes by default).

Measures the classifier's capacity R (closed-loop wrk, all 200s), then holds the service at 70%
of R for --minutes: wrk connections pause between requests, the pause calibrated on a short run
so the achieved rate is ~0.7 R. The soak runs as back-to-back wrk segments (30 s each), and
after every segment it records throughput, p50/p99 latency, non-2xx count and the server's RSS.
Pass criteria (from issue 8): p99 stable (the last third's median p99 within 1.5x of the first
third's, after the first segment) and RSS growth from the end of the first segment to the end
< 5%.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.serve_bench import free_port, machine, request_bodies

ROOT = Path(__file__).resolve().parents[1]

PACED_LUA = r"""
local bodies, path, i, pause = {}, nil, 0, 0
init = function(args)
  path = args[1]
  pause = tonumber(args[3])
  local f = assert(io.open(args[2], "r"))
  for line in f:lines() do bodies[#bodies + 1] = line end
  f:close()
end
delay = function() return pause end
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, '
    .. '"non2xx": %d, "errors": %d}\n', summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency.max, e.status,
    e.connect + e.read + e.write + e.timeout))
end
"""


def wrk(url: str, path: str, files: tuple[Path, Path], clients: int, seconds: float,
        pause_ms: int) -> dict:
    script, bodies = files
    cmd = ["wrk", "-t", "1", "-c", str(clients), "-d", f"{seconds:g}s", "--timeout", "30s",
           "-s", str(script), url, "--", path, str(bodies), str(pause_ms)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    r = json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:])
    r["rate"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def rss_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", text, re.M).group(1)) / 1024


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="neutreno bench soak", description=__doc__.splitlines()[0])
    p.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    p.add_argument("--model", default="fashion-classifier")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--load", type=float, default=0.7, help="fraction of measured capacity")
    p.add_argument("--segment", type=float, default=30.0, help="seconds per wrk segment")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--out", type=Path)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    path = f"/v1/models/{args.model}/classify"
    proc = subprocess.Popen(
        [sys.executable, "-m", "neutreno.cli", "serve", "--host", "127.0.0.1", "--port",
         str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
        env={**os.environ, "NEUTRENO_MODEL_REPOSITORY": str(args.repository),
             "NEUTRENO_LOG_LEVEL": "warning", "NEUTRENO_MAX_QUEUE_SIZE": "1024"})
    segments = []
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        with tempfile.TemporaryDirectory() as tmp:
            files = (Path(tmp, "paced.lua"), Path(tmp, "bodies.jsonl"))
            files[0].write_text(PACED_LUA)
            files[1].write_text("\n".join(request_bodies(64)) + "\n")
            wrk(url, path, files, args.clients, 5, 0)  # warm-up
            capacity = wrk(url, path, files, args.clients, 15, 0)
            assert capacity["non2xx"] == capacity["errors"] == 0, capacity
            target = args.load * capacity["rate"]
            pause = max(1, int(1000 * args.clients / target))
            for _ in range(3):  # calibrate the pause to the target rate
                trial = wrk(url, path, files, args.clients, 8, pause)
                pause = max(1, int(pause * trial["rate"] / target))
            print(f"capacity {capacity['rate']:.0f} req/s (p99 "
                  f"{capacity['p99_us'] / 1e3:.1f} ms); target {target:.0f} req/s; pause "
                  f"{pause} ms x {args.clients} connections", file=sys.stderr)
            start = time.monotonic()
            while time.monotonic() - start < args.minutes * 60:
                r = wrk(url, path, files, args.clients, args.segment, pause)
                r["rss_mib"] = rss_mib(proc.pid)
                r["t_min"] = (time.monotonic() - start) / 60
                segments.append(r)
                print(f"  t={r['t_min']:5.1f} min {r['rate']:7.1f} req/s p50 "
                      f"{r['p50_us'] / 1e3:6.2f} ms p99 {r['p99_us'] / 1e3:6.2f} ms "
                      f"non2xx {r['non2xx']} errors {r['errors']} RSS {r['rss_mib']:.1f} MiB",
                      file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    third = max(1, (len(segments) - 1) // 3)
    first = [s["p99_us"] / 1e3 for s in segments[1:1 + third]]
    last = [s["p99_us"] / 1e3 for s in segments[-third:]]
    p99_ratio = float(np.median(last) / np.median(first))
    rss_growth = (segments[-1]["rss_mib"] - segments[0]["rss_mib"]) / segments[0]["rss_mib"]
    failures = sum(s["non2xx"] + s["errors"] for s in segments)
    ok = p99_ratio < 1.5 and rss_growth < 0.05 and failures == 0
    lines = [
        f"Soak of `{args.model}` for {args.minutes:g} min at {args.load:.0%} of capacity "
        f"({capacity['rate']:.0f} req/s closed-loop with {args.clients} connections -> target "
        f"{target:.0f} req/s). Machine: {machine()}.",
        "",
        "| t (min) | req/s | p50 ms | p99 ms | max ms | non-2xx + errors | server RSS MiB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in segments:
        lines.append(f"| {s['t_min']:.1f} | {s['rate']:.0f} | {s['p50_us'] / 1e3:.2f} | "
                     f"{s['p99_us'] / 1e3:.2f} | {s['max_us'] / 1e3:.1f} | "
                     f"{s['non2xx'] + s['errors']} | {s['rss_mib']:.1f} |")
    lines += ["", f"p99 last third / first third (median): {p99_ratio:.2f}; RSS growth after "
              f"the first segment: {100 * rss_growth:+.2f}%; failures: {failures}. "
              f"**{'PASS' if ok else 'FAIL'}** (p99 ratio < 1.5, RSS growth < 5%, no failures)."]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
