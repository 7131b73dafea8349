"""The pod's probes: exit 0 when GET http://127.0.0.1:$NEUTRENO_PORT<path> answers 2xx within
`timeout` seconds (default 2), else print why and exit 1.

    python /etc/neutreno/probe.py /readyz [timeout]

Mounted from the ConfigMap neutreno-serve-probe (kustomization.yaml). An exec probe rather than
httpGet so that every runtime runs the same check: the kubelet, and `podman kube play`, which runs
probes as healthchecks inside the container and would do an httpGet with curl (not in the image)
on the numeric port only. It is the image's own HEALTHCHECK (the Dockerfile), as a file.
"""

import os
import sys
import urllib.request

path = sys.argv[1] if len(sys.argv) > 1 else "/healthz"
timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
url = f"http://127.0.0.1:{os.environ.get('NEUTRENO_PORT', '8000')}{path}"
try:
    with urllib.request.urlopen(url, timeout=timeout):
        pass
except Exception as exc:  # any failure (refused, timeout, 503) fails the probe
    print(f"{url}: {exc}", file=sys.stderr)
    sys.exit(1)
