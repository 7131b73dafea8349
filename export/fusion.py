"""Load-time rewrite of FidelityAttention onto ONNX Runtime's fused attention kernel (no torch).

Bundles ship the portable form: one `ai.neutreno::FidelityAttention` node per layer whose body is
the standard opset-23 `Attention` plus lam * (V0 - V), on heads-first tensors (B, H, T, D). When
a session is created, `fuse_attention` rewrites a copy of the graph (the file on disk is never
touched) so that each node whose surroundings have the exporter's layout

    L (B, T, 3*H*D) -> Reshape (B, T, 3, H, D) -> Transpose (3, B, H, T, D) -> Slice/Squeeze Q, K, V
    FidelityAttention -> Y (B, H, T, D) -> Transpose (B, T, H, D) -> Reshape (B, T, H*D)

becomes, on the token-major (B, T, H*D) tensors,

    Q, K, V = Split(L)                                   one copy instead of Transpose + 3 Slices
    A, present_key, present_value = com.microsoft.MultiHeadAttention(Q, K, V, attention_bias,
                                                                     past_key, past_value)
    Y = Sum(A, lam*V0, -lam*V)                           lam*V0 computed once per forward

so the head split/merge transposes disappear and the epilogue is two elementwise passes. Every
other node (inputs from elsewhere, causal with a KV cache, a V0 that is not a fused layer's V)
keeps the portable body, inlined here with the outputs nobody reads removed: ORT otherwise
materialises the body's present_key/present_value copies of K and V in every layer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnx
import onnx.inliner
from onnx import TensorProto, helper, numpy_helper

from export.greedy import add_greedy_ids
from export.opdef import DOMAIN, OP_TYPE, attention_nodes
from export.telemetry import gate_output

log = logging.getLogger(__name__)

MS_DOMAIN = "com.microsoft"
HEAD_SPLIT_PERM = [2, 0, 3, 1, 4]  # (B, T, 3, H, D) -> (3, B, H, T, D)
HEAD_MERGE_PERM = [0, 2, 1, 3]  # (B, H, T, D) -> (B, T, H, D)
MASKED = float(np.finfo(np.float16).min)  # attention_bias where attn_mask is False (finite in fp16)

T = TypeVar("T")


@dataclass
class FusionReport:
    """What `fuse_attention` did: node counts, for logs and tests."""

    fused: int = 0
    portable: int = 0
    reasons: list[str] = field(default_factory=list)


class _Graph:
    """Producer/consumer indexes and attribute/constant lookups over one GraphProto."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in g.output}
        self.inits = {i.name: i for i in g.initializer}
        self.shapes = {v.name: v.type.tensor_type for v in [*g.value_info, *g.input, *g.output]}

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant node output, else None."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant" and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def dims(self, name: str) -> list[int | str] | None:
        """Static shape of a tensor (ints, or dim_param strings), None when unknown."""
        if name in self.inits:
            return list(self.inits[name].dims)
        t = self.shapes.get(name)
        if t is None or not t.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]

    def sole_consumer(self, name: str, op_type: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        ok = len(users) == 1 and users[0].op_type == op_type and name not in self.outputs
        return users[0] if ok else None


def _attr(node: onnx.NodeProto, name: str, default: T) -> T:
    """Attribute `name` of `node` (of the default's type in the graphs fused here), else
    `default`."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


@dataclass
class _HeadSplit:
    """One exporter head split: the (B, T, 3C) projection and the nodes that split it."""

    transpose: onnx.NodeProto
    projected: str
    heads: int


def _head_split(g: _Graph, name: str) -> tuple[_HeadSplit, int] | None:
    """(split, index 0/1/2) when `name` is Squeeze(Slice(Transpose(Reshape(L)))), else None."""
    squeeze = g.producer.get(name)
    if squeeze is None or squeeze.op_type != "Squeeze":
        return None
    slice_ = g.producer.get(squeeze.input[0])
    if slice_ is None or slice_.op_type != "Slice" or len(slice_.input) != 4:
        return None
    starts, ends, axes = (g.const(i) for i in slice_.input[1:4])
    if starts is None or ends is None or axes is None or list(axes) != [0]:
        return None
    index = int(starts[0])
    squeezed = g.const(squeeze.input[1]) if len(squeeze.input) > 1 else [0]
    if int(ends[0]) != index + 1 or squeezed is None or list(squeezed) != [0]:
        return None
    transpose = g.producer.get(slice_.input[0])
    if transpose is None or transpose.op_type != "Transpose":
        return None
    if list(_attr(transpose, "perm", [])) != HEAD_SPLIT_PERM:
        return None
    reshape = g.producer.get(transpose.input[0])
    dims = g.dims(transpose.output[0])  # (3, B, H, T, D)
    if (
        reshape is None
        or reshape.op_type != "Reshape"
        or not dims
        or len(dims) != 5
        or dims[0] != 3
        or not isinstance(dims[2], int)
        or not isinstance(dims[4], int)
    ):
        return None
    projected = g.dims(reshape.input[0])  # (B, T, 3*H*D)
    if projected is None or len(projected) != 3 or projected[2] != 3 * dims[2] * dims[4]:
        return None
    return _HeadSplit(transpose, reshape.input[0], dims[2]), index


@dataclass
class _Plan:
    """How one FidelityAttention node fuses: its head split and the head-merge Reshape."""

    node: onnx.NodeProto
    split: _HeadSplit
    merge: onnx.NodeProto  # the Reshape whose output (B, T, C) becomes the fused output
    merge_transpose: onnx.NodeProto


def _plan(g: _Graph, node: onnx.NodeProto) -> _Plan | str:
    """A fusion plan for `node`, or the reason it keeps the portable body."""
    found: list[tuple[_HeadSplit, int]] = []
    for name in node.input[:3]:
        split = _head_split(g, name)
        if split is None:
            return "Q/K/V do not come from the exporter's head split"
        found.append(split)
    splits = {id(f[0].transpose) for f in found}
    if len(splits) != 1 or [f[1] for f in found] != [0, 1, 2]:
        return "Q/K/V are not the three parts of one projection"
    causal = int(_attr(node, "causal", 0))
    past = len(node.input) > 5 and node.input[5] != ""
    if causal and past:
        return "causal with a KV cache"
    transpose = g.sole_consumer(node.output[0], "Transpose")
    if transpose is None or list(_attr(transpose, "perm", [])) != HEAD_MERGE_PERM:
        return "Y is not merged back to (B, T, H*D)"
    merge = g.sole_consumer(transpose.output[0], "Reshape")
    if merge is None:
        return "Y is not merged back to (B, T, H*D)"
    mask = node.input[4] if len(node.input) > 4 else ""
    dims = g.dims(mask) if mask else []
    if dims is None or len(dims) == 1 or len(dims) > 4 or 1 in dims[-2:]:
        return "attn_mask not of shape (..., Tq, Tk)"  # MultiHeadAttention broadcasts only B, H
    return _Plan(node, found[0][0], merge, transpose)


class _Builder:
    """Emits the fused nodes, sharing per-forward tensors (lam*V0, attention biases)."""

    def __init__(self, g: _Graph, plans: dict[int, _Plan]) -> None:
        self.g = g
        self.flat: dict[str, str] = {}  # heads-first V name -> its (B, T, C) split output
        self.splits: dict[int, list[str]] = {}
        for plan in plans.values():
            key = id(plan.split.transpose)
            outs = [f"{plan.split.projected}__fused_{part}" for part in "qkv"]
            self.splits[key] = outs
            self.flat[plan.node.input[2]] = outs[2]
        self.shared: dict[tuple[str, ...], str] = {}
        self.initializers: list[TensorProto] = []

    def split_node(self, plan: _Plan) -> onnx.NodeProto:
        """Split (B, T, 3C) into Q, K, V (B, T, C); emitted where the head-split Transpose was."""
        outputs = self.splits[id(plan.split.transpose)]
        return helper.make_node(
            "Split",
            [plan.split.projected],
            outputs,
            axis=-1,
            num_outputs=3,
            name=f"{plan.split.projected}__split",
        )

    def scalar(self, value: float, like: str, out: list[onnx.NodeProto]) -> str:
        """A scalar of `like`'s dtype (CastLike of a float32 initializer; folded by ORT)."""
        key = ("scalar", repr(value), like)
        if key not in self.shared:
            name = f"__fused_c{len(self.initializers)}"
            self.initializers.append(numpy_helper.from_array(np.array(value, np.float32), name))
            self.shared[key] = f"{name}_{like}"
            out.append(helper.make_node("CastLike", [name, like], [self.shared[key]]))
        return self.shared[key]

    def attention_bias(self, mask: str, like: str, out: list[onnx.NodeProto]) -> str:
        """Additive bias (1 or B, 1, Tq, Tk) from a bool attn_mask, once per mask tensor."""
        key = ("bias", mask)
        if key not in self.shared:
            zero, low = self.scalar(0.0, like, out), self.scalar(MASKED, like, out)
            bias = f"{mask}__fused_bias"
            dims = self.g.dims(mask)
            assert dims is not None  # `_plan` keeps a node whose mask has no static rank portable
            rank = len(dims)
            if rank < 4:
                axes = f"{bias}_axes"
                self.initializers.append(
                    numpy_helper.from_array(np.arange(4 - rank, dtype=np.int64), axes)
                )
                out.append(helper.make_node("Where", [mask, zero, low], [f"{bias}_r"]))
                out.append(helper.make_node("Unsqueeze", [f"{bias}_r", axes], [bias]))
            else:
                out.append(helper.make_node("Where", [mask, zero, low], [bias]))
            self.shared[key] = bias
        return self.shared[key]

    def scaled(self, tensor: str, lam: float, out: list[onnx.NodeProto]) -> str:
        """lam * tensor, computed once per (tensor, lam) in the whole graph."""
        key = ("scaled", tensor, repr(lam))
        if key not in self.shared:
            self.shared[key] = f"{tensor}__x{len(self.shared)}"
            out.append(
                helper.make_node("Mul", [tensor, self.scalar(lam, tensor, out)], [self.shared[key]])
            )
        return self.shared[key]

    def attention(self, plan: _Plan) -> list[onnx.NodeProto] | None:
        """The fused replacement of plan.node, or None when its V0 has no (B, T, C) form."""
        node = plan.node
        out: list[onnx.NodeProto] = []
        inputs = list(node.input) + [""] * (7 - len(node.input))
        q, k, v = self.splits[id(plan.split.transpose)]
        lam = float(_attr(node, "lam", 0.0))
        v0 = inputs[3] if lam != 0.0 else ""
        if v0 and v0 not in self.flat:
            return None
        bias = self.attention_bias(inputs[4], q, out) if inputs[4] else ""
        fused = plan.merge.output[0]
        attn = f"{fused}__attn" if v0 else fused
        out.append(
            helper.make_node(
                "MultiHeadAttention",
                [q, k, v, "", "", bias, inputs[5], inputs[6]],
                [attn, *list(node.output[1:3])],
                domain=MS_DOMAIN,
                name=f"{fused}__mha",
                num_heads=plan.split.heads,
                unidirectional=int(_attr(node, "causal", 0)),
            )
        )
        if v0:
            lam_v0 = self.scaled(self.flat[v0], lam, out)
            neg_lam_v = self.scaled(v, -lam, out)
            out.append(helper.make_node("Sum", [attn, lam_v0, neg_lam_v], [fused]))
        return out


def _inline_portable(model: onnx.ModelProto) -> None:
    """Inline the remaining FidelityAttention bodies and drop the outputs nobody reads."""
    if not attention_nodes(model):
        return
    inlined = onnx.inliner.inline_selected_functions(model, [(DOMAIN, OP_TYPE)], exclude=False)
    model.CopyFrom(inlined)
    g = _Graph(model)
    for node in model.graph.node:
        if node.op_type == "Attention" and node.domain in ("", "ai.onnx"):
            for i in range(1, len(node.output)):
                if node.output[i] not in g.consumers and node.output[i] not in g.outputs:
                    node.output[i] = ""


def _reads(node: onnx.NodeProto) -> set[str]:
    """The names a node reads, including those its subgraphs (If, Loop) read from outside."""
    names = {i for i in node.input if i}
    for a in node.attribute:
        for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
            for inner in sub.node:
                names |= _reads(inner)
    return names


def _drop_dead_nodes(model: onnx.ModelProto) -> None:
    """Remove nodes none of whose outputs reach a graph output (the replaced splits/merges) and
    the initializers nothing reads any more."""
    needed = {o.name for o in model.graph.output}
    kept = []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output if o):
            kept.append(node)
            needed |= _reads(node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(kept))
    inits = [i for i in model.graph.initializer if i.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)


def fuse_attention(model: onnx.ModelProto) -> tuple[onnx.ModelProto, FusionReport]:
    """A copy of `model` with FidelityAttention on MultiHeadAttention where the layout allows,
    the portable body (inlined, unused outputs pruned) elsewhere. `model` is not modified."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g, report = _Graph(model), FusionReport()
    plans: dict[int, _Plan] = {}
    for node in attention_nodes(model):
        plan = _plan(g, node)
        if isinstance(plan, str):
            report.reasons.append(f"{node.name or node.output[0]}: {plan}")
        else:
            plans[id(node)] = plan
    builder = _Builder(g, plans)
    replaced: dict[int, list[onnx.NodeProto]] = {}
    for key, plan in plans.items():
        fused = builder.attention(plan)
        if fused is None:
            report.reasons.append(f"{plan.node.name}: V0 is not the V of a fused layer")
        else:
            replaced[key] = fused
    split_at = {id(p.split.transpose): p for p in plans.values()}  # unused ones are dropped
    skip = {id(n) for k in replaced for n in (plans[k].merge, plans[k].merge_transpose)}
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if id(node) in split_at:
            nodes.append(builder.split_node(split_at[id(node)]))
        if id(node) in replaced:
            nodes.extend(replaced[id(node)])
        elif id(node) not in skip:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(builder.initializers)
    if replaced and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    report.fused, report.portable = len(replaced), len(attention_nodes(model))
    _inline_portable(model)
    _drop_dead_nodes(model)
    return model, report


def session_model(source: str | Path | onnx.ModelProto, fused: bool = True) -> bytes:
    """The bytes an ORT session is created from: a bundle's model.onnx (path or proto) with
    attention fused, the similarity telemetry gated (`export.telemetry`) and a language model's
    greedy ids added (`export.greedy`), or as shipped when fused=False. The service and the
    benchmarks both create their sessions from this."""
    model = source if isinstance(source, onnx.ModelProto) else onnx.load(str(source))
    if not fused:
        return model.SerializeToString()
    model, report = fuse_attention(model)
    gated = gate_output(model)
    greedy = add_greedy_ids(model)
    log.info(
        "%s: FidelityAttention %d fused, %d portable%s; similarity telemetry %s%s",
        source if not isinstance(source, onnx.ModelProto) else model.graph.name,
        report.fused,
        report.portable,
        "".join(f"; {r}" for r in report.reasons),
        "gated" if gated else "always on",
        "; greedy ids on the device" if greedy else "",
    )
    return model.SerializeToString()
