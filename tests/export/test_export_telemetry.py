"""The token-similarity gate (export.telemetry): same outputs by default, NaN and no similarity
subgraph when the flag is off, on the shipped classifier and LM."""

from __future__ import annotations

import numpy as np
import onnx
from support.export_helpers import ROOT

from export.bundle import SIMILARITY
from export.fusion import fuse_attention
from export.runtime import empty_past, session
from export.telemetry import SIMILARITY_FLAG, gate_output

CLASSIFIER = ROOT / "model_repository/fashion-classifier/1/model.onnx"
LM = ROOT / "model_repository/kjv-lm/2/model.onnx"


def test_gate_moves_the_similarity_nodes_under_if() -> None:
    model, _ = fuse_attention(onnx.load(str(CLASSIFIER)))
    before = len(model.graph.node)
    assert gate_output(model)
    gate = model.graph.node[-1]
    assert gate.op_type == "If" and list(gate.output) == [SIMILARITY]
    moved = len(next(a.g for a in gate.attribute if a.name == "then_branch").node)
    assert moved > 20 and len(model.graph.node) == before - moved + 1
    assert not gate_output(model)  # already gated


def test_classifier_flag_off_gives_nan_and_same_logits() -> None:
    gated, shipped = session(CLASSIFIER), session(CLASSIFIER, fused=False)
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    want = shipped.run(None, {"pixel_values": x})
    on = gated.run(None, {"pixel_values": x})
    off = gated.run(None, {"pixel_values": x, SIMILARITY_FLAG: np.array(False)})
    np.testing.assert_allclose(on[1], want[1], atol=1e-5)
    np.testing.assert_allclose(off[0], want[0], atol=1e-4)
    assert off[1].shape == want[1].shape and np.isnan(off[1]).all()


def test_lm_flag_off_keeps_logits_and_presents() -> None:
    sess = session(LM)
    ids = np.array([[5, 6, 7]], np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    for i, (k, v) in enumerate(empty_past(sess, 1)):
        feed[f"past_key_values.{i}.key"], feed[f"past_key_values.{i}.value"] = k, v
    names = [o.name for o in sess.get_outputs()]  # logits, presents, similarity, greedy ids
    on = dict(zip(names, sess.run(None, feed), strict=True))
    off = dict(zip(names, sess.run(None, {**feed, SIMILARITY_FLAG: np.array(False)}), strict=True))
    for name in names:
        if name != SIMILARITY:
            np.testing.assert_array_equal(on[name], off[name])
    assert np.isfinite(on[SIMILARITY]).all() and np.isnan(off[SIMILARITY]).all()
    assert off[SIMILARITY].shape == (1, 6)
