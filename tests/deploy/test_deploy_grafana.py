"""The Grafana provisioning and dashboard, and every PromQL expression in the dashboard and in the
alert rules, checked against the metric names and labels the service exports."""

from __future__ import annotations

import re

import yaml
from support.deploy_helpers import (
    GRAFANA_DIR,
    TARGET_LABELS,
    dashboard,
    dashboard_exprs,
    exported_metrics,
    metric_names,
    panels,
    rule_exprs,
)

SELECTOR_RE = re.compile(r"(neutreno_[A-Za-z0-9_]+)\s*\{([^}]*)\}")
MATCHER_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING_RE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def check_expr(where: str, expr: str, exported: dict, source: str) -> list[str]:
    problems = []
    names = metric_names(expr)
    for name in sorted(names - exported.keys()):
        problems.append(f"{where}: {name} is not exported by the service ({source})")
    known = [exported[n] for n in names if n in exported]
    if any(labels is None for labels in known):
        return problems  # not every metric documents its labels
    for metric, body in SELECTOR_RE.findall(expr):
        for label in MATCHER_RE.findall(body):
            allowed = (exported.get(metric) or set()) | TARGET_LABELS
            if label not in allowed and metric in exported:
                problems.append(f"{where}: {metric} has no label {label!r}")
    union = set().union(*known) | TARGET_LABELS if known else TARGET_LABELS
    for group in GROUPING_RE.findall(expr):
        for label in filter(None, (x.strip() for x in group.split(","))):
            if label not in union:
                problems.append(
                    f"{where}: grouping label {label!r} exists on none of {sorted(names)}"
                )
    return problems


def test_dashboard_queries_use_only_exported_metrics_and_labels():
    exported, source = exported_metrics()
    problems = [
        p for where, expr in dashboard_exprs() for p in check_expr(where, expr, exported, source)
    ]
    assert not problems, "\n".join(problems)


def test_alert_rules_use_only_exported_metrics_and_labels():
    exported, source = exported_metrics()
    problems = [
        p for where, expr in rule_exprs() for p in check_expr(where, expr, exported, source)
    ]
    assert not problems, "\n".join(problems)


def test_checker_catches_unknown_metric_and_label():
    exported, source = exported_metrics()
    assert check_expr("x", "rate(neutreno_no_such_metric_total[5m])", exported, source)
    if source == "service/metrics.py":
        assert check_expr("x", 'neutreno_queue_depth{colour="red"}', exported, source)
        assert check_expr("x", "sum by (colour) (neutreno_queue_depth)", exported, source)
    assert not check_expr(
        "x", 'sum by (model) (neutreno_queue_depth{model=~".*"})', exported, source
    )


def test_dashboard_covers_the_production_signals():
    dash = dashboard()
    assert dash["uid"] == "neutreno-serve"
    exprs = " ".join(expr for _, expr in dashboard_exprs())
    required = {
        "request rate": "rate(neutreno_requests_total",
        "latency quantiles": "histogram_quantile(0.99, sum by (le) "
        "(rate(neutreno_request_duration_seconds_bucket",
        "batch size": "neutreno_batch_size_",
        "queue depth": "neutreno_queue_depth",
        "time to first token": "neutreno_time_to_first_token_seconds_bucket",
        "tokens per second": "rate(neutreno_generated_tokens_total",
        "token similarity per layer": "avg by (model, layer) (neutreno_token_similarity",
    }
    missing = [what for what, needle in required.items() if needle not in exprs]
    assert not missing, f"dashboard lacks panels for {missing}"
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dash):
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "prometheus", panel["title"]
            grid = panel["gridPos"]
            assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus():
    ds = yaml.safe_load((GRAFANA_DIR / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"  # the compose service name
    prov = yaml.safe_load((GRAFANA_DIR / "provisioning/dashboards/neutreno.yml").read_text())
    (provider,) = prov["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
