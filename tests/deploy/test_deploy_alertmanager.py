"""Alertmanager's configuration (deploy/alertmanager), checked by amtool and run by Debian's
prometheus-alertmanager: every alert of deploy/prometheus/rules routes by its severity, and the
inhibition rules silence the symptoms of a replica that is down."""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest
import yaml
from support.deploy_helpers import (
    DEPLOY,
    PROMETHEUS_DIR,
    get,
    stop,
    wait_for,
)
from support.tools import require_tool

from bench.live_server import free_port

CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
RECEIVER = {"critical": "oncall", "warning": "team"}


def alerts() -> list[dict]:
    """Every alerting rule of deploy/prometheus/rules."""
    out = []
    for path in sorted((PROMETHEUS_DIR / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            out += [r for r in group["rules"] if "alert" in r]
    return out


def amtool(*args: str) -> subprocess.CompletedProcess:
    exe = require_tool(
        "amtool", target="deploy-tools", package="Debian package prometheus-alertmanager"
    )
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)


def test_amtool_check_config():
    result = amtool("check-config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_routes_by_its_severity():
    rules = alerts()
    assert len(rules) >= 10
    for rule in rules:
        severity = rule["labels"]["severity"]
        result = amtool(
            "config",
            "routes",
            "test",
            f"--config.file={CONFIG}",
            f"alertname={rule['alert']}",
            f"severity={severity}",
            "job=neutreno-api",
            "instance=api:8000",
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [RECEIVER[severity]], (rule["alert"], result.stdout)


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory):
    exe = require_tool(
        "prometheus-alertmanager",
        target="deploy-tools",
        package="Debian package prometheus-alertmanager",
    )
    tmp = tmp_path_factory.mktemp("alertmanager")
    url = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [
            exe,
            f"--config.file={CONFIG}",
            f"--storage.path={tmp}",
            f"--web.listen-address={url.removeprefix('http://')}",
            "--cluster.listen-address=",
        ],
        stdout=open(tmp / "log", "wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for("Alertmanager ready", lambda: get(f"{url}/-/ready")[0] == 200, 60, [proc])
        yield url
    finally:
        stop(proc)


def post_alerts(url: str, *labels: dict[str, str]) -> None:
    body = json.dumps(
        [{"labels": {"job": "neutreno-api", "instance": "api:8000", **lab}} for lab in labels]
    ).encode()
    request = urllib.request.Request(
        f"{url}/api/v2/alerts", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_api_down_inhibits_the_replicas_other_alerts(alertmanager):
    post_alerts(
        alertmanager,
        {"alertname": "NeutrenoApiDown", "severity": "critical"},
        {"alertname": "NeutrenoHighP99Latency", "severity": "warning"},
        {"alertname": "NeutrenoHighErrorRate", "severity": "critical", "instance": "api-2:8000"},
    )

    def states():
        status, body = get(f"{alertmanager}/api/v2/alerts")
        found = {(a["labels"]["alertname"], a["labels"]["instance"]): a for a in json.loads(body)}
        inhibited = ("NeutrenoHighP99Latency", "api:8000")  # the source must be processed first
        return (
            found
            if status == 200
            and len(found) == 3
            and all(a["status"]["state"] != "unprocessed" for a in found.values())
            and found[inhibited]["status"]["state"] == "suppressed"
            else None
        )

    found = wait_for("the posted alerts processed", states, 30, [])
    assert found[("NeutrenoApiDown", "api:8000")]["status"]["state"] == "active"
    assert found[("NeutrenoApiDown", "api:8000")]["receivers"][0]["name"] == "oncall"
    latency = found[("NeutrenoHighP99Latency", "api:8000")]
    assert latency["status"]["state"] == "suppressed" and latency["status"]["inhibitedBy"]
    # Another replica's alert is not inhibited by this one being down.
    assert found[("NeutrenoHighErrorRate", "api-2:8000")]["status"]["state"] == "active"
