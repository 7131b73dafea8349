"""ONNX export of NeuTRENO models with the ai.neutreno::FidelityAttention op, and model bundles.

export.bundle and export.opdef do not import torch (the service imports them).
"""
