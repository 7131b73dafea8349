"""NeuTRENO models in PyTorch: fidelity attention, ViT, Segmenter and a causal LM."""

from models.registry import build_model, create_model, get_config, list_models

__all__ = ["build_model", "create_model", "get_config", "list_models"]
