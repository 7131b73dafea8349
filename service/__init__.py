"""NeuTRENO Serve: FastAPI + ONNX Runtime serving of NeuTRENO model bundles (no torch here).

`create_app` and `Settings` are loaded on first use, so importing any `service.*` module does not
import the whole application (and no module reaches back to the package through it).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Settings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from service.frontend.app import create_app

        return create_app
    if name == "Settings":
        from service.settings import Settings

        return Settings
    raise AttributeError(f"module 'service' has no attribute {name!r}")
