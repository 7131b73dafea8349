"""deploy/otel: the OpenTelemetry Collector config and the compose override that adds the
collector and Jaeger (`docker compose config` on both files; the wiring checked end to end:
api -> collector's OTLP/HTTP receiver -> Jaeger's OTLP/gRPC port)."""

from __future__ import annotations

from urllib.parse import urlsplit

import yaml
from support.deploy_helpers import DEPLOY, compose_config

OTEL = DEPLOY / "otel"
OVERRIDE = "deploy/otel/docker-compose.otel.yml"


def collector() -> dict:
    return yaml.safe_load((OTEL / "collector.yaml").read_text())


def test_collector_pipeline_uses_only_defined_components() -> None:
    config = collector()
    pipeline = config["service"]["pipelines"]["traces"]
    for kind in ("receivers", "processors", "exporters"):
        assert pipeline[kind] and set(pipeline[kind]) <= set(config[kind]), kind
    assert set(config["service"]["extensions"]) <= set(config["extensions"])
    assert pipeline["processors"][0] == "memory_limiter"  # first, as the collector docs ask


def test_compose_override_wires_api_collector_and_jaeger() -> None:
    config = compose_config("docker-compose.yml", OVERRIDE)
    services = config["services"]
    assert {"api", "prometheus", "grafana", "otel-collector", "jaeger"} <= services.keys()
    env = services["api"]["environment"]
    assert env["OTEL_TRACES_EXPORTER"] == "otlp" and env["OTEL_SERVICE_NAME"]
    endpoint = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert (
        endpoint.hostname == "otel-collector" and "otel-collector" in services["api"]["depends_on"]
    )
    (volume,) = services["otel-collector"]["volumes"]
    assert volume["source"] == str(OTEL / "collector.yaml") and volume["read_only"]
    assert f"--config={volume['target']}" in services["otel-collector"]["command"]
    receiver = collector()["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert receiver.rsplit(":", 1)[1] == str(endpoint.port)  # OTLP/HTTP on the same port
    jaeger = collector()["exporters"]["otlp/jaeger"]["endpoint"]
    host, port = jaeger.rsplit(":", 1)
    assert host == "jaeger" and port == "4317" and host in services
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert any(p["target"] == 16686 for p in services["jaeger"]["ports"])
