"""The load-time rewrite of FidelityAttention onto com.microsoft MultiHeadAttention (export.fusion):
parity with models.attention.fidelity_attention for every input combination, the portable body
where the layout does not fuse, and the shipped bundles' outputs unchanged."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from support.export_helpers import ROOT

from export.fusion import fuse_attention
from export.opdef import DOMAIN, OP_TYPE, attach_functions
from export.runtime import lm_step, session
from models.attention import fidelity_attention

B, T, P, H, D = 2, 4, 3, 2, 8
C = H * D
LAM = 0.6
F = TensorProto.FLOAT


def head_split(i: int, nodes: list, inits: list, infos: list) -> list[str]:
    """The exporter's split of x{i} (B, T, 3C) into heads-first q, k, v (B, H, T, D)."""
    if not inits:
        inits += [
            numpy_helper.from_array(np.array(v, np.int64), n)
            for n, v in [
                ("qkv_shape", [0, 0, 3, H, D]),
                ("merge_shape", [0, 0, C]),
                ("zero", [0]),
                ("one", [1]),
                ("two", [2]),
                ("three", [3]),
            ]
        ]
    nodes += [
        helper.make_node("Reshape", [f"x{i}", "qkv_shape"], [f"r{i}"]),
        helper.make_node("Transpose", [f"r{i}"], [f"t{i}"], perm=[2, 0, 3, 1, 4]),
    ]
    infos.append(helper.make_tensor_value_info(f"t{i}", F, [3, "b", H, "t", D]))
    names = []
    for j, (start, end) in enumerate([("zero", "one"), ("one", "two"), ("two", "three")]):
        name = f"{'qkv'[j]}{i}"
        nodes += [
            helper.make_node("Slice", [f"t{i}", start, end, "zero"], [f"{name}_s"]),
            helper.make_node("Squeeze", [f"{name}_s", "zero"], [name]),
        ]
        names.append(name)
    return names


def layers_graph(mask_rank: int, causal: int, past: bool) -> onnx.ModelProto:
    """Two attention layers in the exporter's layout: layer 0 without V0, layer 1 with layer 0's
    V as V0; optional shared attn_mask and past_key/past_value; outputs y0, y1 (B, T, C)."""
    nodes: list = []
    inits: list = []
    infos: list = []
    inputs = [helper.make_tensor_value_info(f"x{i}", F, ["b", "t", 3 * C]) for i in range(2)]
    outputs = []
    total = P + T if past else T
    mask = ""
    if mask_rank:
        mask = "mask"
        shape = [B, 1, T, total] if mask_rank == 4 else [T, total]
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.BOOL, shape))
        infos.append(helper.make_tensor_value_info("mask", TensorProto.BOOL, shape))
    if past:
        inputs += [
            helper.make_tensor_value_info(n, F, ["b", H, "p", D])
            for n in ("past_key", "past_value")
        ]
    v_first = ""
    for i in range(2):
        q, k, v = head_split(i, nodes, inits, infos)
        presents = [f"present_key{i}", f"present_value{i}"] if past else ["", ""]
        lam = LAM if i else 0.0
        nodes.append(
            helper.make_node(
                OP_TYPE,
                [q, k, v, v_first, mask, *(["past_key", "past_value"] if past else [])],
                [f"a{i}", *presents],
                domain=DOMAIN,
                lam=lam,
                causal=causal,
                name=f"attn{i}",
            )
        )
        nodes += [
            helper.make_node("Transpose", [f"a{i}"], [f"m{i}"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", [f"m{i}", "merge_shape"], [f"y{i}"]),
        ]
        outputs.append(helper.make_tensor_value_info(f"y{i}", F, ["b", "t", C]))
        outputs += [helper.make_tensor_value_info(n, F, ["b", H, "s", D]) for n in presents if n]
        v_first = v_first or v
    graph = helper.make_graph(nodes, "layers", inputs, outputs, inits, value_info=infos)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 23), helper.make_opsetid(DOMAIN, 1)]
    )
    return attach_functions(model)


def feeds(mask_rank: int, past: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {f"x{i}": rng.standard_normal((B, T, 3 * C)).astype(np.float32) for i in range(2)}
    total = P + T if past else T
    if mask_rank:
        itself = np.arange(total)[None] == np.arange(T)[:, None] + total - T  # (T, total)
        keys = rng.random((B, 1, T, total) if mask_rank == 4 else (T, total)) > 0.4
        out["mask"] = keys | itself
    if past:
        out["past_key"], out["past_value"] = (
            rng.standard_normal((B, H, P, D)).astype(np.float32) for _ in range(2)
        )
    return out


def reference(inputs: dict[str, np.ndarray], causal: int, past: bool) -> dict[str, np.ndarray]:
    """models.attention.fidelity_attention on the same tensors, in float64."""
    t = {k: torch.from_numpy(v) for k, v in inputs.items()}
    mask = t.get("mask")
    out, v_first = {}, None
    for i in range(2):
        q, k, v = t[f"x{i}"].double().view(B, T, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
        if past:
            k = torch.cat([t["past_key"].double(), k], 2)
            v_all = torch.cat([t["past_value"].double(), v], 2)
            out[f"present_key{i}"], out[f"present_value{i}"] = k.numpy(), v_all.numpy()
        else:
            v_all = v
        y = fidelity_attention(
            q, k, v_all, v_first, lam=LAM if i else 0.0, causal=bool(causal), mask=mask, fused=False
        )
        out[f"y{i}"] = y.transpose(1, 2).reshape(B, T, C).numpy()
        v_first = v if v_first is None else v_first
    return out


COMBOS = list(itertools.product([0, 2, 4], [0, 1], [False, True]))


@pytest.mark.parametrize("mask_rank,causal,past", COMBOS)
def test_fused_matches_fidelity_attention(mask_rank: int, causal: int, past: bool) -> None:
    """Every input combination: MultiHeadAttention (or the portable body for causal with a KV
    cache) within 1e-4 of models.attention.fidelity_attention, presents included."""
    model = layers_graph(mask_rank, causal, past)
    fused, report = fuse_attention(model)
    expect_fused = not (causal and past)
    assert (report.fused, report.portable) == ((2, 0) if expect_fused else (0, 2))
    ops = {n.op_type for n in fused.graph.node}
    assert ("MultiHeadAttention" in ops) == expect_fused
    assert ("Transpose" in ops) != expect_fused  # the head split/merge transposes are gone
    inputs = feeds(mask_rank, past)
    want = reference(inputs, causal, past)
    sess = session(model)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs), strict=False))
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, atol=1e-4, rtol=0, err_msg=name)


def test_lam_v0_is_computed_once_per_forward() -> None:
    """Two fidelity layers reading the same V0 share one lam*V0 product."""
    model = layers_graph(0, 0, False)
    fused, _ = fuse_attention(model)
    mul_inputs = [n.input[0] for n in fused.graph.node if n.op_type == "Mul"]
    assert mul_inputs.count(mul_inputs[0]) == 1 and len(mul_inputs) == 2  # lam*V0, -lam*V


def test_portable_body_drops_unread_present_copies() -> None:
    """A node outside the exporter's layout keeps the body, inlined with the Attention node's
    present_key/present_value removed when nothing reads them (the cause of the body being
    slower than a plain Attention node)."""
    names = ["Q", "K", "V"]
    node = helper.make_node(OP_TYPE, names, ["Y", "", ""], domain=DOMAIN)
    graph = helper.make_graph(
        [node],
        "one",
        [helper.make_tensor_value_info(n, F, [B, H, T, D]) for n in names],
        [helper.make_tensor_value_info("Y", F, [B, H, T, D])],
    )
    model = attach_functions(
        helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 23), helper.make_opsetid(DOMAIN, 1)]
        )
    )
    fused, report = fuse_attention(model)
    assert (report.fused, report.portable) == (0, 1)
    attention = [n for n in fused.graph.node if n.op_type == "Attention"]
    assert len(attention) == 1 and list(attention[0].output)[1:] in ([], ["", ""])


SHIPPED = sorted(p.parent for p in (ROOT / "model_repository").glob("*/*/manifest.json"))


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.parent.name)
def test_shipped_bundle_fuses_with_outputs_unchanged(folder: Path) -> None:
    """Every attention of the shipped bundles fuses; fused vs portable <= 1e-4 (LM: prefill with
    left padding, then a decode step on the cache); the file on disk is untouched."""
    path = folder / "model.onnx"
    before = path.read_bytes()
    _, report = fuse_attention(onnx.load(str(path)))
    assert report.fused > 0 and report.portable == 0, report.reasons
    fused, portable = session(path), session(path, fused=False)
    if (folder / "tokenizer.json").is_file():
        ids = np.random.default_rng(0).integers(0, 100, (2, 5))
        mask = np.ones_like(ids)
        mask[0, :2] = 0
        a, b = lm_step(fused, ids, mask), lm_step(portable, ids, mask)
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-4, rtol=0)
        mask = np.concatenate([mask, np.ones((2, 1), np.int64)], 1)
        a, b = (
            lm_step(fused, ids[:, :1], mask, a.presents),
            lm_step(portable, ids[:, :1], mask, b.presents),
        )
        pairs = [(a.logits, b.logits), (a.token_similarity, b.token_similarity)]
    else:
        spec = fused.get_inputs()[0]
        x = np.random.default_rng(0).standard_normal([3, *spec.shape[1:]]).astype(np.float32)
        pairs = list(
            zip(fused.run(None, {spec.name: x}), portable.run(None, {spec.name: x}), strict=False)
        )
    for got, want in pairs:
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert path.read_bytes() == before
