"""Exported graphs: ORT == PyTorch (<= 1e-4) at two batch sizes, and attention is only
FidelityAttention."""

from __future__ import annotations

import onnx
import pytest
from support.export_helpers import Exported

from export.bundle import OTHER_ATTENTION
from export.opdef import DOMAIN, NO_FIDELITY, OP_TYPE
from export.verify import TOLERANCE, lm_parity, random_lm, random_vision, vision_parity
from models.attention import Attention


@pytest.fixture(params=["classifier", "segmenter", "lm"])
def exported(request: pytest.FixtureRequest) -> Exported:
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("batch", [2, 5])
def test_vision_parity(classifier: Exported, segmenter: Exported, batch: int) -> None:
    for e in (classifier, segmenter):
        parity = vision_parity(e.model, e.sess, random_vision(e.cfg, batch, seed=batch), "random")
        assert parity.max_abs_diff <= TOLERANCE, (e.cfg.name, parity)


@pytest.mark.parametrize("lengths", [[7], [4, 9, 6]])
def test_lm_parity_prefill_and_decode(lm: Exported, lengths: list[int]) -> None:
    parity = lm_parity(lm.model, lm.sess, *random_lm(lm.cfg, lengths, seed=len(lengths)), "random")
    assert parity.max_abs_diff <= TOLERANCE, parity


def test_attention_is_only_fidelity_attention(exported: Exported) -> None:
    """One FidelityAttention node per attention layer, layer 0 of each stack without V0, and no
    other attention implementation anywhere in the main graph."""
    nodes = exported.proto.graph.node
    ours = [n for n in nodes if n.op_type == OP_TYPE]
    layers = [m for m in exported.model.modules() if isinstance(m, Attention)]
    assert len(ours) == len(layers)
    assert all(n.domain == DOMAIN for n in ours)
    assert not [n.op_type for n in nodes if n.op_type in OTHER_ATTENTION]
    first_layers = 2 if exported.cfg.family == "segmenter" else 1  # the decoder has its own v0
    assert sum(n.overload == NO_FIDELITY for n in ours) == first_layers
    for n in ours:
        lam = next(a.f for a in n.attribute if a.name == "lam")
        want = 0.0 if n.overload == NO_FIDELITY else exported.cfg.fidelity_lam
        assert lam == pytest.approx(want)
    bodies = {(f.domain, f.name, f.overload) for f in exported.proto.functions}
    assert {(DOMAIN, OP_TYPE, ""), (DOMAIN, OP_TYPE, NO_FIDELITY)} <= bodies
    onnx.checker.check_model(exported.proto, full_check=True)


def test_dynamic_axes(exported: Exported) -> None:
    dims = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in exported.proto.graph.input
    }
    assert all(shape[0] == "batch" for shape in dims.values())
    if exported.cfg.family == "lm":
        assert dims["input_ids"] == ["batch", "sequence"]
        assert dims["past_key_values.0.key"][2] == "past_sequence"


def test_softmax_baseline_uses_standard_attention(classifier: Exported, export_tmp) -> None:
    baseline = onnx.load(str(export_tmp / "baseline.onnx"))
    ops = [(n.domain, n.op_type) for n in baseline.graph.node]
    assert ops.count(("", "Attention")) == classifier.cfg.depth
    assert not any(op == OP_TYPE for _, op in ops)
    onnx.checker.check_model(baseline, full_check=True)
