"""The edge proxy's configuration (deploy/nginx), checked and run by Debian's nginx.

`nginx -t` accepts it as shipped and with the TLS server of docker-compose.tls.yml (a self-signed
certificate made here). Then nginx runs it for real in front of a live `neutreno serve`: it
proxies the api, hides /metrics, refuses bodies over the limit with 413, caps the connections one
client holds, and drops a client that stalls sending its headers.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support.deploy_helpers import (
    API_SETTINGS,
    DEPLOY,
    ROOT,
    get,
    stop,
    wait_for,
)
from support.tools import require_tool

from bench.live_server import LiveServer, free_port

NGINX_DIR = DEPLOY / "nginx"


def local_copy(
    tmp: Path,
    upstream_port: int,
    listen_port: int,
    tls_port: int | None = None,
    grpc_ports: tuple[int, int] = (8001, 8081),
) -> Path:
    """deploy/nginx with the compose names made local: the api upstream on 127.0.0.1:upstream_port,
    the plain server on listen_port, the gRPC upstream and server on grpc_ports (api, edge) and,
    with tls_port, the TLS server (certificate made here)."""
    conf = tmp / "nginx"
    shutil.copytree(NGINX_DIR, conf)
    main = conf / "nginx.conf"
    text = main.read_text()
    assert "server api:8000;" in text and "include /etc/nginx/tls.d/*.conf;" in text
    assert "server api:8001;" in text
    main.write_text(
        text.replace("server api:8000;", f"server 127.0.0.1:{upstream_port};")
        .replace("server api:8001;", f"server 127.0.0.1:{grpc_ports[0]};")
        .replace("/tmp/", f"{tmp}/")
    )
    http = conf / "servers" / "http.conf"
    http.write_text(http.read_text().replace("listen 8080;", f"listen 127.0.0.1:{listen_port};"))
    grpc = conf / "servers" / "grpc.conf"
    assert "listen 8081 http2;" in grpc.read_text()
    grpc.write_text(grpc.read_text().replace("listen 8081", f"listen 127.0.0.1:{grpc_ports[1]}"))
    if tls_port is not None:
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-keyout",
                str(tmp / "tls.key"),
                "-out",
                str(tmp / "tls.crt"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        https = (conf / "tls" / "https.conf").read_text()
        assert "listen 8443 ssl" in https
        (conf / "servers" / "https.conf").write_text(
            https.replace("/etc/nginx/certs/", f"{tmp}/").replace(
                "listen 8443 ssl", f"listen 127.0.0.1:{tls_port} ssl"
            )
        )
    return main


def nginx_test(main: Path) -> subprocess.CompletedProcess:
    exe = require_tool("nginx", target="deploy-tools", package="Debian package nginx")
    return subprocess.run([exe, "-t", "-c", str(main)], capture_output=True, text=True, timeout=60)


def test_nginx_accepts_the_config_plain_and_with_tls(tmp_path):
    require_tool("openssl", target="deploy-tools", package="Debian package openssl")
    for name, tls_port in (("plain", None), ("tls", 8443)):
        (tmp_path / name).mkdir()
        result = nginx_test(local_copy(tmp_path / name, 8000, 8080, tls_port))
        assert result.returncode == 0, result.stderr
        assert "test is successful" in result.stderr


def test_nginx_sets_the_documented_limits():
    text = "\n".join(p.read_text() for p in NGINX_DIR.rglob("*.conf"))
    for directive in (
        "limit_conn per_client 64;",
        "limit_conn_status 429;",
        "client_header_timeout 10s;",
        "client_body_timeout 15s;",
        "client_max_body_size 8m;",
        "keepalive_timeout 30s;",
        "keepalive_requests 1000;",
        "proxy_http_version 1.1;",
        "X-Forwarded-For $proxy_add_x_forwarded_for;",
    ):
        assert directive in text, directive


@pytest.fixture(scope="module")
def edge_ports(tmp_path_factory):
    """A live `neutreno serve` (shipped bundles) with nginx in front: the edge's base URL and
    its gRPC port."""
    nginx = require_tool("nginx", target="deploy-tools", package="Debian package nginx")
    tmp = tmp_path_factory.mktemp("edge")
    edge_port, grpc_ports = free_port(), (free_port(), free_port())
    api = LiveServer(
        ROOT / "model_repository",
        {**API_SETTINGS, "NEUTRENO_GRPC_PORT": str(grpc_ports[0])},
        log=tmp / "api.log",
    )
    main = local_copy(tmp, api.port, edge_port, grpc_ports=grpc_ports)
    proxy = subprocess.Popen(
        [nginx, "-c", str(main), "-g", "daemon off;"],
        stdout=open(tmp / "nginx.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        api.wait_ready(timeout=300)
        base = f"http://127.0.0.1:{edge_port}"
        wait_for("the api through nginx", lambda: get(f"{base}/healthz")[0] == 200, 60, [proxy])
        yield base, grpc_ports[1]
    finally:
        stop(proxy)
        api.stop()


@pytest.fixture(scope="module")
def edge(edge_ports):
    """The edge's base URL."""
    return edge_ports[0]


def test_edge_passes_grpc_to_the_api(edge_ports):
    """The gRPC server of the edge (servers/grpc.conf) reaches the api's KServe v2 / Triton gRPC
    service: server and model readiness, and an inference, with tritonclient."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{edge_ports[1]}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("fashion-classifier")
        meta = client.get_model_metadata("fashion-classifier")
        (spec,) = meta.inputs
        shape = [1, *(d if d > 0 else 1 for d in list(spec.shape)[1:])]
        tensor = grpcclient.InferInput(spec.name, shape, spec.datatype)
        tensor.set_data_from_numpy(np.zeros(shape, np.float32))
        result = client.infer("fashion-classifier", [tensor])
        assert meta.outputs and all(result.as_numpy(o.name).shape[0] == 1 for o in meta.outputs)
    finally:
        client.close()


def test_edge_proxies_the_api_and_hides_metrics(edge):
    status, body = get(f"{edge}/v1/models")
    assert status == 200 and b"fashion-classifier" in body
    assert get(f"{edge}/metrics")[0] == 404


def test_edge_refuses_a_body_over_the_limit(edge):
    request = urllib.request.Request(
        f"{edge}/v1/models/fashion-classifier/classify",
        data=b"x" * (8 * 1024 * 1024 + 1),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=30)
    assert error.value.code == 413
    assert error.value.headers["Server"] == "nginx"  # refused at the edge, not by the api


def test_edge_caps_connections_per_client(edge):
    """64 connections are held open mid-request; the 65th request is refused with 429."""
    host, port = edge.removeprefix("http://").split(":")
    held = []
    try:
        for _ in range(64):
            conn = socket.create_connection((host, int(port)), timeout=5)
            # Headers complete, body pending: nginx has a request in flight on each connection.
            conn.sendall(
                b"POST /v1/models/fashion-classifier/classify HTTP/1.1\r\n"
                b"Host: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n"
            )
            held.append(conn)
        time.sleep(0.5)
        assert get(f"{edge}/v1/models")[0] == 429
    finally:
        for conn in held:
            conn.close()
    wait_for("connections released", lambda: get(f"{edge}/v1/models")[0] == 200, 10, [])


def test_edge_drops_a_client_that_stalls_its_headers(edge):
    """client_header_timeout (10 s): half a request line, then silence, gets the connection
    closed (408 without a response; reset_timedout_connection sends a reset) well before a slow
    client could hold it forever."""
    host, port = edge.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        try:
            assert conn.recv(1024) == b""
        except ConnectionResetError:
            pass
        assert 9 <= time.monotonic() - started <= 20
