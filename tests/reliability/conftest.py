"""Reliability fixtures: a repository with every kind of bundle (classifier, segmenter, LM).

The tests here run `neutreno serve` as a real process and attack it: generated requests
(schemathesis), a corpus of hostile inputs, overload, SIGTERM under load, and faults. They
reuse the service tests' tiny bundles (tests/support/service_helpers.py) and tiny LM
(tests/support/generation_helpers.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.generation_helpers import add_lm, tiny_lm
from support.service_helpers import write_test_repository


@pytest.fixture(scope="session")
def lm_build(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny LM (checkpoint + bundle), exported once and cached across runs."""
    return tiny_lm(request.config, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def full_repository(tmp_path_factory: pytest.TempPathFactory, lm_build: Path) -> Path:
    """fashion-classifier, fashion-segmenter (tiny vision bundles) and tiny-lm."""
    repo = write_test_repository(tmp_path_factory.mktemp("reliability_repo"))
    return add_lm(repo, lm_build)
