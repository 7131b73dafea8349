"""Deploy-test fixtures (the helpers live in tests/support/deploy_helpers.py)."""

from __future__ import annotations

import pytest
from support.deploy_helpers import container_engine


@pytest.fixture(scope="session")
def engine() -> tuple[str, dict[str, str]]:
    """(engine name, environment) for the image and compose tests; MissingTool where there is
    none (`make container-engine` installs podman)."""
    return container_engine()
