"""The CPU image, built by `make image` and run for real (docker, else podman).

It must build, stay under 400 MB, become healthy (its HEALTHCHECK, i.e. /readyz) within the
HEALTHCHECK start period, classify Fashion-MNIST images, run as uid 10001 without torch, and on
SIGTERM finish a completion it is streaming and exit 0. Containers use the host network (sandboxes
have no other) with
NEUTRENO_PORT set to a free port, which the CMD and the HEALTHCHECK both read.
"""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.request
import uuid

import numpy as np
import pytest
from support.deploy_helpers import ROOT, finish_streams, inspect, make_image, run, start_stream

from bench.live_server import free_port

pytestmark = pytest.mark.slow

MAX_IMAGE_MB = 400


@pytest.fixture(scope="module")
def image(engine) -> str:
    return make_image("cpu")


def healthcheck(image_config: dict) -> dict:
    """The image's HEALTHCHECK (docker keeps it in Config, podman at the top level)."""
    return image_config["Config"].get("Healthcheck") or image_config["Healthcheck"]


def healthy(engine, container: str) -> bool:
    """One HEALTHCHECK verdict. podman runs healthchecks from systemd timers, which sandboxes lack,
    so it is asked to run the check now; docker's daemon runs them itself."""
    if engine[0] == "podman":
        return run(engine, "healthcheck", "run", container, timeout=30).returncode == 0
    return (
        inspect(engine, "container", container)["State"].get("Health", {}).get("Status")
        == "healthy"
    )


def classify(port: int, images: np.ndarray) -> list[int]:
    """Top-1 class index of each 28x28 uint8 image from the served fashion-classifier."""
    from PIL import Image

    out = []
    for pixels in images:
        buf = io.BytesIO()
        Image.fromarray(pixels, "L").save(buf, format="PNG")
        body = json.dumps({"image": base64.b64encode(buf.getvalue()).decode(), "top_k": 1}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/models/fashion-classifier/classify",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            out.append(json.load(response)["predictions"][0]["index"])
    return out


def test_cpu_image_size_user_and_no_torch(engine, image):
    config = inspect(engine, "image", image)
    size_mb = config["Size"] / 1e6
    assert size_mb <= MAX_IMAGE_MB, f"{image} is {size_mb:.0f} MB"
    assert config["Config"]["User"] == "10001:10001"
    assert "/readyz" in " ".join(healthcheck(config)["Test"])
    probe = (
        "import importlib.util, os; "
        "print(os.getuid(), importlib.util.find_spec('torch') is None, "
        "importlib.util.find_spec('onnxruntime') is not None)"
    )
    result = run(engine, "run", "--rm", "--network", "host", image, "python", "-c", probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["10001", "True", "True"]


def test_cpu_container_becomes_ready_classifies_and_drains(engine, image):
    port = free_port()
    name = f"neutreno-test-{uuid.uuid4().hex[:8]}"
    start_period_s = healthcheck(inspect(engine, "image", image))["StartPeriod"] / 1e9
    started = time.monotonic()
    result = run(
        engine,
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "host",
        "-e",
        f"NEUTRENO_PORT={port}",
        "-e",
        "NEUTRENO_HOST=127.0.0.1",
        image,
    )
    assert result.returncode == 0, result.stderr
    try:
        while not healthy(engine, name):
            elapsed = time.monotonic() - started
            assert elapsed < start_period_s, (
                f"not healthy after {elapsed:.1f}s (start period {start_period_s:.0f}s):\n"
                + run(engine, "logs", name).stderr[-3000:]
            )
            time.sleep(0.5)
        ready_s = time.monotonic() - started
        data = np.load(ROOT / "tests/fixtures/fashion-mnist-test-200.npz")
        predicted = classify(port, data["images"][:20])
        correct = int((np.array(predicted) == data["labels"][:20]).sum())
        assert correct >= 16, f"{correct}/20 correct: {predicted}"
        uid = run(engine, "exec", name, "python", "-c", "import os; print(os.getuid())")
        assert uid.stdout.strip() == "10001", uid.stderr
        # SIGTERM while 8 completions stream: each must still run to its end ([DONE]), and at
        # least one must not have ended when the signal was sent (so the drain is what ran it).
        streams = [start_stream(port) for _ in range(8)]
        kill = run(engine, "kill", "--signal", "TERM", name)
        assert kill.returncode == 0, kill.stderr
        in_flight = finish_streams(streams)
        assert in_flight >= 1
        wait = run(engine, "wait", name, timeout=60)
        assert wait.returncode == 0, wait.stderr
        state = inspect(engine, "container", name)["State"]
        logs = run(engine, "logs", name)
        assert state["ExitCode"] == 0, logs.stdout[-2000:] + logs.stderr[-2000:]
        assert "Application shutdown complete" in logs.stdout + logs.stderr
        print(
            f"{image}: healthy {ready_s:.1f}s after `run`, {in_flight}/8 streams in flight "
            "at SIGTERM"
        )
    finally:
        run(engine, "rm", "-f", name)
