"""The Prometheus configuration and alert rules, checked by promtool (Debian package
`prometheus`)."""

from __future__ import annotations

import subprocess

import yaml
from support.deploy_helpers import K8S_DIR, PROMETHEUS_DIR
from support.tools import require_tool

RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))


def promtool(*args: str) -> subprocess.CompletedProcess:
    exe = require_tool("promtool", target="deploy-tools", package="Debian package prometheus")
    return subprocess.run(
        [exe, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120
    )


def test_promtool_check_config():
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_check_rules():
    assert RULE_FILES
    result = promtool("check", "rules", *(str(p.relative_to(PROMETHEUS_DIR)) for p in RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_fire_each_alert():
    """promtool test rules: every alert fires on a synthetic incident and stays quiet when
    healthy."""
    tests = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
    assert tests
    result = promtool("test", "rules", *(str(p.relative_to(PROMETHEUS_DIR)) for p in tests))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set()
    for path in tests:
        for case in yaml.safe_load(path.read_text())["tests"]:
            tested |= {
                a["alertname"] for a in case.get("alert_rule_test", []) if a.get("exp_alerts")
            }
    alerts = {
        r["alert"]
        for p in RULE_FILES
        for g in yaml.safe_load(p.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    untested = alerts - tested
    assert not untested, f"alerts without a firing unit test: {sorted(untested)}"


def test_alerts_cover_required_signals():
    exprs = {
        r["alert"]: r["expr"]
        for p in RULE_FILES
        for g in yaml.safe_load(p.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    records = {
        r["record"]: r["expr"]
        for p in RULE_FILES
        for g in yaml.safe_load(p.read_text())["groups"]
        for r in g["rules"]
        if "record" in r
    }
    text = lambda name: exprs[name] + " ".join(v for k, v in records.items() if k in exprs[name])  # noqa: E731
    assert 'status=~"5.."' in text("NeutrenoHighErrorRate")
    assert "histogram_quantile(0.99" in text("NeutrenoHighP99Latency")
    assert "neutreno_queue_depth" in text("NeutrenoQueueSaturated")
    assert "up{" in text("NeutrenoApiDown") and "neutreno_model_info" in text("NeutrenoNotReady")
    assert "neutreno_token_similarity" in text("NeutrenoOverSmoothingDrift")
    assert "offset 1d" in text("NeutrenoOverSmoothingDrift")


def test_scrape_config_targets_the_compose_api_service():
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "neutreno-api"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"][0]["targets"] == ["api:8000"]
    assert config["rule_files"] == ["rules/*.yml"]


def test_k8s_prometheusrule_matches_the_rule_files():
    """deploy/k8s/prometheus-operator/prometheusrule.yaml carries the same groups as
    docker-compose."""
    groups = [g for p in RULE_FILES for g in yaml.safe_load(p.read_text())["groups"]]
    crd = yaml.safe_load((K8S_DIR / "prometheus-operator/prometheusrule.yaml").read_text())
    assert crd["kind"] == "PrometheusRule"
    assert crd["spec"]["groups"] == groups, (
        "out of date: python deploy/k8s/prometheus-operator/sync_rules.py"
    )
