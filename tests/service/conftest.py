"""Service test fixtures: a repository of tiny bundles, a TestClient app, the image fixture,
the tiny LM bundle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from support.generation_helpers import add_lm, tiny_lm
from support.service_helpers import ROOT, make_settings, write_test_repository

from service import create_app


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_repository(tmp_path_factory.mktemp("model_repository"))


@pytest.fixture(scope="module")
def client(repository: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(repository))) as c:
        yield c


@pytest.fixture(scope="session")
def fashion() -> tuple[np.ndarray, np.ndarray]:
    """The Fashion-MNIST test fixture: images (200, 28, 28) uint8 and labels (200,)."""
    data = np.load(ROOT / "tests/fixtures/fashion-mnist-test-200.npz")
    return data["images"], data["labels"]


@pytest.fixture(scope="module")
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny LM: `checkpoint/` (torch) and `bundle/tiny-lm/1/` (see generation_helpers)."""
    return tiny_lm(request.config, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def lm_repository(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny vision bundles and the tiny LM: a repository for live servers."""
    return add_lm(write_test_repository(tmp_path_factory.mktemp("lm_repository")), built)
