"""Export test fixtures: tiny randomly initialised checkpoints, exported once per session.

Exports are the slow part (several seconds each on two cores), so each model is exported once
and shared: the classifier and the LM through the `neutreno export` CLI (bundle on disk), the
segmenter through `export_model` directly.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import onnx
import pytest
import torch
from support.export_helpers import TINY_MODELS, Exported, tiny_checkpoint
from torch import nn

from export.bundle import load_bundle
from export.cli import main as export_main
from export.graphs import export_model
from export.runtime import session
from models import create_model
from models.checkpoint import load_checkpoint


def via_cli(tmp: Path, name: str, *extra: str) -> Exported:
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    ckpt = tiny_checkpoint(tmp / "checkpoints" / name, name)
    out = tmp / "model_repository" / name / "1"
    assert export_main([str(ckpt), "--out", str(out), *extra]) == 0
    bundle = load_bundle(out)
    model, cfg = load_checkpoint(ckpt)
    return Exported(
        model, cfg, onnx.load(str(bundle.model_path)), session(bundle.model_path), bundle
    )


@pytest.fixture(scope="session")
def export_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="session")
def classifier(export_tmp: Path) -> Exported:
    """Tiny ViT via the CLI, with the softmax baseline at export_tmp/baseline.onnx."""
    return via_cli(
        export_tmp, "vit-fashion", "--softmax-baseline", str(export_tmp / "baseline.onnx")
    )


@pytest.fixture(scope="session")
def lm(export_tmp: Path) -> Exported:
    return via_cli(export_tmp, "lm-kjv")


@pytest.fixture(scope="session")
def segmenter() -> Exported:
    torch.manual_seed(0)
    model = create_model("segmenter-fashion", **TINY_MODELS["segmenter-fashion"]).eval()
    nn.init.normal_(model.refiner.conv2.weight, std=0.1)  # a new refiner is the identity
    proto = export_model(model, model.cfg)
    return Exported(model, model.cfg, proto, session(proto))


@pytest.fixture()
def bundle_copy(classifier: Exported, lm: Exported, tmp_path: Path):
    """Copy a fresh bundle folder ('classifier' or 'lm') into tmp_path for tampering."""

    def copy(kind: str) -> Path:
        src = (classifier if kind == "classifier" else lm).bundle.path
        return Path(shutil.copytree(src, tmp_path / src.parent.name / src.name))

    return copy
