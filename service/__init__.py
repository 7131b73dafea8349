"""NeuTRENO Serve: FastAPI + ONNX Runtime serving of NeuTRENO model bundles (no torch here)."""

from service.app import create_app
from service.settings import Settings

__all__ = ["Settings", "create_app"]
