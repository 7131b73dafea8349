"""FidelityAttention at the op level: schema, torch custom op, and the ONNX function body in ORT."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from export.opdef import (
    DOMAIN,
    INPUTS,
    NO_FIDELITY,
    OP_TYPE,
    OUTPUTS,
    attach_functions,
    register_schema,
)
from export.ops import fidelity_attention_op, onnx_core
from export.runtime import session
from models.attention import attention_core

B, H, T, P, D = 2, 3, 4, 5, 8


def tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "Q": (B, H, T, D),
        "K": (B, H, T, D),
        "V": (B, H, T, D),
        "V0": (B, H, T, D),
        "past_key": (B, H, P, D),
        "past_value": (B, H, P, D),
    }
    out = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    keys = torch.rand(B, 1, 1, P + T, generator=g) > 0.3
    itself = torch.arange(P + T)[None] == torch.arange(T)[:, None] + P  # (T, P + T)
    out["attn_mask"] = keys | itself  # (B, 1, T, P + T); every query sees at least itself
    return out


def test_schema_registered() -> None:
    register_schema()
    schema = onnx.defs.get_schema(OP_TYPE, 1, DOMAIN)
    assert [i.name for i in schema.inputs] == INPUTS
    assert [o.name for o in schema.outputs] == OUTPUTS
    assert set(schema.attributes) == {"lam", "causal"}


def test_custom_op_passes_opcheck() -> None:
    t = tensors()
    torch.library.opcheck(
        fidelity_attention_op,
        (
            t["Q"],
            t["K"],
            t["V"],
            t["V0"],
            t["attn_mask"],
            t["past_key"],
            t["past_value"],
            0.6,
            True,
        ),
    )


@pytest.mark.parametrize("causal", [False, True])
def test_onnx_core_matches_attention_core(causal: bool) -> None:
    t = tensors()
    past = (t["past_key"], t["past_value"])
    kwargs = dict(lam=0.6, causal=causal, mask=t["attn_mask"], past=past)
    want, (wk, wv) = attention_core(t["Q"], t["K"], t["V"], t["V0"], **kwargs)
    got, (gk, gv) = onnx_core(t["Q"], t["K"], t["V"], t["V0"], **kwargs)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(gk, wk) and torch.equal(gv, wv)


def single_node(names: list[str], lam: float, causal: int) -> onnx.ModelProto:
    """A graph with one FidelityAttention node over the named inputs ('' = omitted)."""
    node = helper.make_node(OP_TYPE, names, OUTPUTS, domain=DOMAIN, lam=lam, causal=causal)
    dims = {"Q": T, "K": T, "V": T, "V0": T, "past_key": P, "past_value": P}
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, [B, H, dims[n], D])
        for n in names
        if n in dims
    ]
    if "attn_mask" in names:
        inputs.append(
            helper.make_tensor_value_info("attn_mask", TensorProto.BOOL, [B, 1, T, P + T])
        )
    outputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, [B, H, t, D])
        for n, t in zip(OUTPUTS, (T, P + T, P + T), strict=False)
    ]
    graph = helper.make_graph([node], "one", inputs, outputs)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 23), helper.make_opsetid(DOMAIN, 1)]
    )
    return attach_functions(model)


@pytest.mark.parametrize("with_v0", [True, False])
@pytest.mark.parametrize("causal", [0, 1])
def test_function_body_in_ort_matches_torch(with_v0: bool, causal: int) -> None:
    """The body (standard Attention + lam (V0 - V)) with past, mask and causal == attention_core."""
    t = tensors(1)
    names = [n if (n != "V0" or with_v0) else "" for n in INPUTS]
    model = single_node(names, 0.6, causal)
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.node[0].overload == ("" if with_v0 else NO_FIDELITY)
    feeds = {n: t[n].numpy() for n in names if n}
    y, pk, pv = session(model).run(None, feeds)
    want, (wk, wv) = attention_core(
        t["Q"],
        t["K"],
        t["V"],
        t["V0"] if with_v0 else None,
        lam=0.6,
        causal=bool(causal),
        mask=t["attn_mask"],
        past=(t["past_key"], t["past_value"]),
        fused=False,
    )
    np.testing.assert_allclose(y, want.numpy(), atol=1e-5)
    np.testing.assert_array_equal(pk, wk.numpy())
    np.testing.assert_array_equal(pv, wv.numpy())
