"""Kubernetes manifests under deploy/k8s, parsed with PyYAML (and rendered with `kubectl kustomize`
where kubectl is installed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from support.deploy_helpers import K8S_DIR
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


def test_probes_and_drain(base):
    api = container(base["Deployment"])
    port = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert port["http"] == 8000
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert api[probe]["httpGet"]["port"] in ("http", 8000)
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
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in ("http", 8000)
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


@pytest.mark.optional(
    "kubectl comes with the machine image (Debian bookworm's kubernetes-client is 1.20, years "
    "behind); the YAML checks above run without it"
)
@pytest.mark.parametrize("overlay", [".", "prometheus-operator"])
def test_kubectl_kustomize_renders(overlay):
    kubectl = require_tool("kubectl", target=None, package="kubectl from the Kubernetes project")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S_DIR / overlay)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler"} <= kinds
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "neutreno", doc["kind"]
