"""The shipped bundles in model_repository/: they load, run in ORT CPU and match their checkpoints.

Both are committed: every bundle's manifest names its training checkpoint (checkpoints/<name>/),
and a missing bundle or checkpoint fails here rather than skipping.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from support.export_helpers import ROOT

from export.bundle import PIXEL_VALUES, TEXT_GENERATION, load_bundle
from export.opdef import DOMAIN, OP_TYPE
from export.runtime import empty_past, lm_step, session

SHIPPED_NAMES = ("fashion-classifier", "fashion-segmenter", "kjv-lm")
BUNDLES = sorted(p.parent for p in (ROOT / "model_repository").glob("*/*/manifest.json"))


def bundle_id(folder: Path) -> str:
    return f"{folder.parent.name}/{folder.name}"


def test_every_shipped_name_is_present() -> None:
    assert set(SHIPPED_NAMES) <= {p.parent.name for p in BUNDLES}


@pytest.mark.parametrize("folder", BUNDLES, ids=bundle_id)
def test_shipped_bundle_loads_and_runs(folder: Path) -> None:
    bundle = load_bundle(folder)  # sha256, opset, FidelityAttention-only attention, graph I/O
    model = onnx.load(str(bundle.model_path))
    onnx.checker.check_model(model, full_check=True)
    assert any(n.op_type == OP_TYPE and n.domain == DOMAIN for n in model.graph.node)
    sess = session(bundle.model_path)
    if bundle.task == TEXT_GENERATION:
        ids = np.array([[1, 2, 3], [4, 5, 6]], np.int64)
        step = lm_step(sess, ids, np.ones_like(ids), empty_past(sess, 2))
        assert step.logits.shape == (2, 3, bundle.manifest["generation"]["vocab_size"])
    else:
        c, h, w = (d for d in bundle.manifest["inputs"][0]["shape"][1:])
        out = sess.run(None, {PIXEL_VALUES: np.zeros((2, c, h, w), np.float32)})
        assert np.isfinite(out[0]).all() and out[1].shape[0] == 2


@pytest.mark.parametrize("folder", BUNDLES, ids=bundle_id)
def test_shipped_bundle_matches_checkpoint(folder: Path) -> None:
    """ORT vs PyTorch <= 1e-4 at two batch sizes, on random and real inputs."""
    from export.verify import verify
    from models.checkpoint import load_checkpoint, load_sample

    manifest = json.loads((folder / "manifest.json").read_text())
    checkpoint = ROOT / (
        manifest["training"].get("checkpoint") or "checkpoints/" + folder.parent.name
    )
    assert (checkpoint / "model.safetensors").is_file(), f"{folder} names a missing {checkpoint}"
    model, cfg = load_checkpoint(checkpoint)
    tokenizer = folder / "tokenizer.json" if cfg.family == "lm" else None
    checks = verify(
        model, cfg, session(folder / "model.onnx"), tokenizer, sample=load_sample(checkpoint)
    )
    assert len(checks) == 3  # random at two batch sizes and real inputs
