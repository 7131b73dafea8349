"""`docker compose up` for real: the api (the image `make image` built), the nginx edge,
Prometheus and Alertmanager, from docker-compose.yml + docker-compose.cpu.yml, on docker or on
podman's Docker-compatible API (`podman system service`).

tests/deploy/docker-compose.test.yml only swaps images that cannot be pulled where just package
registries are reachable: Prometheus and Alertmanager run the Debian packages' binaries on the
Debian base image, the edge runs Debian's nginx (an image built from the base), grafana stays
down. Everything else (commands, mounts, the nginx upstream, prometheus.yml's scrape and alerting
targets by service name, rules) is the production file's. The edge must proxy the api, Prometheus
must scrape the api, load and evaluate every rule, and find Alertmanager.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support.deploy_helpers import (
    PROMETHEUS_DIR,
    ROOT,
    compose_command,
    get,
    make_image,
    wait_for,
)
from support.tools import require_tool

from bench.live_server import free_port

pytestmark = pytest.mark.slow

TEST_OVERRIDE = Path(__file__).with_name("docker-compose.test.yml")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def poll(what: str, check, timeout: float):
    """check() until it returns something truthy (no local processes to watch)."""
    return wait_for(what, check, timeout, [])


@pytest.fixture(scope="module")
def docker_host(engine, tmp_path_factory) -> Iterator[dict[str, str]]:
    """Environment for compose: the docker daemon, or a podman API service started here."""
    name, env = engine
    if name == "docker":
        yield env
        return
    sock = tmp_path_factory.mktemp("podman") / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        poll("podman's API socket", sock.exists, 30)
        yield {**env, "DOCKER_HOST": f"unix://{sock}"}
    finally:
        service.terminate()
        service.wait(timeout=30)


@pytest.fixture(scope="module")
def stack(docker_host) -> Iterator[dict[str, str]]:
    compose = compose_command()
    require_tool("prometheus", target="deploy-tools", package="Debian package prometheus")
    require_tool(
        "prometheus-alertmanager",
        target="deploy-tools",
        package="Debian package prometheus-alertmanager",
    )
    make_image("cpu")
    ports = {
        "NEUTRENO_PORT": free_port(),
        "NEUTRENO_GRPC_PORT": free_port(),
        "NEUTRENO_EDGE_PORT": free_port(),
        "NEUTRENO_EDGE_GRPC_PORT": free_port(),
        "PROMETHEUS_PORT": free_port(),
        "ALERTMANAGER_PORT": free_port(),
    }
    env = {**docker_host, **{k: str(v) for k, v in ports.items()}}
    cmd = [
        *compose,
        "-p",
        f"neutreno-test-{uuid.uuid4().hex[:8]}",
        "-f",
        "docker-compose.yml",
        "-f",
        "docker-compose.cpu.yml",
        "-f",
        str(TEST_OVERRIDE),
    ]
    build = subprocess.run(
        [*cmd, "build", "edge"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert build.returncode == 0, build.stdout + build.stderr
    up = subprocess.run(
        [*cmd, "up", "-d", "--no-build"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield {
            name: f"http://127.0.0.1:{ports[var]}"
            for name, var in (
                ("api", "NEUTRENO_PORT"),
                ("edge", "NEUTRENO_EDGE_PORT"),
                ("prometheus", "PROMETHEUS_PORT"),
                ("alertmanager", "ALERTMANAGER_PORT"),
            )
        }
    finally:
        logs = subprocess.run(
            [*cmd, "logs", "--no-color", "--tail", "20"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        print(logs.stdout[-6000:])
        subprocess.run(
            [*cmd, "down", "-v", "-t", "10"], cwd=ROOT, env=env, capture_output=True, timeout=180
        )


def rule_names() -> set[str]:
    names = set()
    for path in (PROMETHEUS_DIR / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names |= {r.get("alert") or r["record"] for r in group["rules"]}
    return names


def test_prometheus_scrapes_the_api_by_service_name(stack):
    poll("the api's /readyz", lambda: get_json(f"{stack['api']}/readyz")["status"] == "ok", 120)

    def api_target():
        targets = get_json(f"{stack['prometheus']}/api/v1/targets")["data"]["activeTargets"]
        (target,) = [t for t in targets if t["labels"]["job"] == "neutreno-api"]
        return target if target["health"] == "up" else None

    target = poll("Prometheus scraping api:8000", api_target, 90)
    assert target["labels"]["instance"] == "api:8000"
    query = urllib.request.quote("neutreno_model_info == 1")
    models = poll(
        "neutreno_model_info in Prometheus",
        lambda: get_json(f"{stack['prometheus']}/api/v1/query?query={query}")["data"]["result"],
        60,
    )
    assert {m["metric"]["model"] for m in models} >= {"fashion-classifier"}


def test_edge_proxies_the_api_by_service_name(stack):
    models = poll("the api through the edge", lambda: get_json(f"{stack['edge']}/v1/models"), 120)
    assert "fashion-classifier" in json.dumps(models)
    assert get(f"{stack['edge']}/metrics")[0] == 404


def test_every_rule_loads_and_evaluates(stack):
    expected = rule_names()

    def evaluated():
        groups = get_json(f"{stack['prometheus']}/api/v1/rules")["data"]["groups"]
        rules = {r["name"]: r for g in groups for r in g["rules"]}
        return (
            rules
            if rules.keys() == expected and all(r["health"] == "ok" for r in rules.values())
            else None
        )

    rules = poll("every rule evaluated with health ok", evaluated, 90)
    assert len(rules) == len(expected) > 10


def test_prometheus_finds_alertmanager(stack):
    poll(
        "Alertmanager ready",
        lambda: urllib.request.urlopen(f"{stack['alertmanager']}/-/ready", timeout=5).status == 200,
        60,
    )
    active = poll(
        "an active Alertmanager in Prometheus",
        lambda: get_json(f"{stack['prometheus']}/api/v1/alertmanagers")["data"][
            "activeAlertmanagers"
        ],
        60,
    )
    assert [a["url"] for a in active] == ["http://alertmanager:9093/api/v2/alerts"]
    status = get_json(f"{stack['alertmanager']}/api/v2/status")
    receivers = yaml.safe_load(status["config"]["original"])["receivers"]
    assert {r["name"] for r in receivers} == {"oncall", "team"}
