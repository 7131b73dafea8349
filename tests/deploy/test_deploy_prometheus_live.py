"""The real Prometheus server (Debian package `prometheus`) scraping a real `neutreno serve`.

Both run on loopback ports chosen here. Prometheus gets the project's
deploy/prometheus/prometheus.yml
with the `neutreno-api` job's target pointed at the service (and 1 s intervals), loads the
project's alert rules, and is asked through its HTTP API that
  * the target is up (`up == 1`),
  * neutreno_requests_total is queryable after requests, with the requests' labels,
  * every alert / recording rule evaluates without error,
  * every Grafana dashboard query is valid PromQL that the server accepts,
  * every neutreno_* family the rules and dashboard use is declared in the live /metrics.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
import yaml
from support.deploy_helpers import (
    API_SETTINGS,
    PROMETHEUS_DIR,
    ROOT,
    dashboard_exprs,
    get,
    metric_names,
    rule_exprs,
    stop,
    wait_for,
)
from support.tools import require_tool

from bench.live_server import LiveServer, free_port

pytestmark = pytest.mark.slow


def post_json(url: str, payload: dict) -> int:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def png_b64(size: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(
        np.random.default_rng(0).integers(0, 255, (size, size), dtype=np.uint8), "L"
    ).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    promtool_dir = require_tool(
        "prometheus", target="deploy-tools", package="Debian package prometheus"
    )
    tmp = tmp_path_factory.mktemp("prometheus-live")
    prom_port = free_port()

    repository = ROOT / "model_repository"  # the shipped bundles, fashion-classifier among them
    models = sorted({p.parent.parent.name for p in repository.glob("*/*/manifest.json")})
    api = LiveServer(
        repository, {**API_SETTINGS, "NEUTRENO_SIMILARITY_SAMPLE_EVERY": "1"}, log=tmp / "api.log"
    )
    procs = [api.proc]
    try:
        api.wait_ready(timeout=300)

        # The project's scrape config, pointed at the service on loopback.
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        config["global"]["scrape_interval"] = "1s"
        config["global"]["evaluation_interval"] = "1s"
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        api_job = jobs["neutreno-api"]
        api_job["scrape_interval"], api_job["scrape_timeout"] = "1s", "1s"
        api_job["static_configs"][0]["targets"] = [f"127.0.0.1:{api.port}"]
        jobs["prometheus"]["static_configs"][0]["targets"] = [f"127.0.0.1:{prom_port}"]
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        shutil.copytree(PROMETHEUS_DIR / "rules", tmp / "rules")

        prom = subprocess.Popen(
            [
                promtool_dir,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            cwd=tmp,
            stdout=open(tmp / "prometheus.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        procs.append(prom)
        base = f"http://127.0.0.1:{prom_port}"
        wait_for("Prometheus /-/ready", lambda: get(f"{base}/-/ready")[0] == 200, 60, procs)
        yield {
            "api": api.url,
            "prom": base,
            "procs": procs,
            "tmp": tmp,
            "models": models,
        }
    finally:
        for proc in procs[1:]:
            stop(proc)
        api.stop()


def query(stack, promql: str) -> dict:
    url = f"{stack['prom']}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    status, body = get(url)
    data = json.loads(body)
    assert status == 200 and data["status"] == "success", f"{promql}: {data}"
    return data["data"]


def test_target_is_up(stack):
    def up():
        result = query(stack, 'up{job="neutreno-api"}')["result"]
        return result and result[0]["value"][1] == "1"

    wait_for('up{job="neutreno-api"} == 1', up, 60, stack["procs"])
    targets = json.loads(get(f"{stack['prom']}/api/v1/targets")[1])["data"]["activeTargets"]
    (api,) = [t for t in targets if t["labels"]["job"] == "neutreno-api"]
    assert api["health"] == "up", api
    assert api["scrapeUrl"] == f"{stack['api']}/metrics"


def test_requests_total_is_queryable_after_requests(stack):
    for _ in range(5):
        assert get(f"{stack['api']}/v1/models")[0] == 200
    assert get(f"{stack['api']}/v1/models/no-such-model")[0] == 404

    def counted():
        result = query(stack, 'neutreno_requests_total{job="neutreno-api", endpoint="/v1/models"}')
        return [s for s in result["result"] if float(s["value"][1]) >= 5]

    (series,) = wait_for("neutreno_requests_total for /v1/models", counted, 60, stack["procs"])
    assert series["metric"]["status"] == "200"
    # (model="" on routes without a model: Prometheus drops empty labels)
    assert {"endpoint", "status", "job", "instance"} <= series["metric"].keys()
    assert series["metric"]["instance"] == stack["api"].removeprefix("http://")
    not_found = query(stack, 'sum(neutreno_requests_total{job="neutreno-api", status="404"})')
    assert not_found["result"] and float(not_found["result"][0]["value"][1]) >= 1
    for name in stack["models"]:  # the model label is set on routes that name a loaded model
        assert get(f"{stack['api']}/v2/models/{name}")[0] in (200, 503)

        def per_model(name=name):
            return query(stack, f'neutreno_requests_total{{job="neutreno-api", model="{name}"}}')[
                "result"
            ]

        wait_for(f"neutreno_requests_total{{model={name!r}}}", per_model, 60, stack["procs"])
    rate = query(stack, 'sum(rate(neutreno_requests_total{job="neutreno-api"}[1m]))')
    assert rate["resultType"] == "vector"


def test_inference_metrics_reach_prometheus(stack):
    """A real classification: model info, batch size and token similarity become queryable."""
    url = f"{stack['api']}/v1/models/fashion-classifier/classify"
    for _ in range(4):
        assert post_json(url, {"image": png_b64(28)}) == 200

    def scraped():
        info = query(stack, 'neutreno_model_info{job="neutreno-api", model="fashion-classifier"}')
        ok = query(stack, 'sum(neutreno_requests_total{model="fashion-classifier", status="200"})')
        batches = query(stack, 'sum(neutreno_batch_size_count{model="fashion-classifier"})')
        return (
            info["result"]
            and ok["result"]
            and float(ok["result"][0]["value"][1]) >= 4
            and batches["result"]
            and float(batches["result"][0]["value"][1]) >= 1
        )

    wait_for("classification metrics in Prometheus", scraped, 60, stack["procs"])
    similarity = query(stack, 'neutreno_token_similarity{model="fashion-classifier"}')["result"]
    assert similarity, "neutreno_token_similarity was not scraped"
    assert all(-1.0 - 1e-6 <= float(s["value"][1]) <= 1.0 + 1e-6 for s in similarity)
    assert {s["metric"]["layer"] for s in similarity}


def test_alert_rules_load_and_evaluate(stack):
    expected = {name for name, _ in rule_exprs()}

    def evaluated():
        groups = json.loads(get(f"{stack['prom']}/api/v1/rules")[1])["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if {r["name"] for r in rules} != expected:
            return None
        if any(r.get("lastEvaluation", "").startswith("0001-") for r in rules):
            return None  # not evaluated yet
        return rules

    rules = wait_for("every rule evaluated once", evaluated, 60, stack["procs"])
    broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not broken, broken


def test_dashboard_queries_are_valid_promql(stack):
    for _where, expr in dashboard_exprs():
        if expr.startswith("label_values("):
            metric = expr[len("label_values(") :].split(",")[0]
            query(stack, metric)
            continue
        promql = expr.replace("$__rate_interval", "1m").replace("$model", ".*")
        query(stack, promql)  # asserts status == success


def test_metric_families_used_are_declared_in_live_metrics(stack):
    status, body = get(f"{stack['api']}/metrics")
    assert status == 200
    declared = {
        line.split()[2] for line in body.decode().splitlines() if line.startswith("# TYPE ")
    }
    kinds = {
        line.split()[2]: line.split()[3]
        for line in body.decode().splitlines()
        if line.startswith("# TYPE ")
    }
    series = set()
    for family in declared:
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(
            kinds[family], ("",)
        )
        series |= {family + s for s in suffixes} | {family}
    used = set().union(*(metric_names(e) for _, e in dashboard_exprs() + rule_exprs()))
    missing = used - series
    assert not missing, f"not in the live /metrics: {sorted(missing)}"
