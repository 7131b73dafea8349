# One-command set-up: `make serve` serves the shipped bundles on :8000, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check -q
HOST ?= 0.0.0.0
PORT ?= 8000

.PHONY: serve test data train export bench clean

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

test: $(VENV)/.dev
	$(BIN)/python -m pytest -q tests

# Real data from Debian packages (needs root): Fashion-MNIST IDX files and the KJV text.
data: $(VENV)/.dev
	@command -v bible >/dev/null && test -d /usr/share/datasets/fashion-mnist || \
		(apt-get update -q && apt-get install -y -q dataset-fashion-mnist bible-kjv)
	$(BIN)/python -m models.data.prepare --out data

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
