"""ONNX export of NeuTRENO models with the ai.neutreno::FidelityAttention op, and model bundles.

export.bundle, export.opdef, export.fusion, export.telemetry and export.runtime do not import torch
(the service imports them).
"""
