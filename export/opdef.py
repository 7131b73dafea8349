"""`ai.neutreno::FidelityAttention` on the ONNX side (no torch): schema and function bodies.

One node per attention layer:

    Y = Attention(Q, K, V, attn_mask, past_key, past_value)  +  lam * (V0 - V)

Inputs Q (B, H, Tq, D), K and V (B, H, Tq, D) of the current tokens, optional V0 (B, H, Tq, D),
optional bool attn_mask broadcastable to (B, H, Tq, P + Tq) (True = attend), optional past_key /
past_value (B, H, P, D). Outputs Y (B, H, Tq, D) and present_key / present_value (B, H, P + Tq, D).
Attributes: lam (float, default 0), causal (int, bottom-right aligned, default 0).

The body is a model-local FunctionProto (standard opset-23 `Attention` plus the fidelity term), so
stock onnxruntime inlines and runs it; a runtime with a native kernel for the op uses the kernel.
A node without V0 uses the `no_fidelity` overload, whose body is the `Attention` alone.
"""

from __future__ import annotations

import onnx
from onnx import helper

DOMAIN = "ai.neutreno"
OP_TYPE = "FidelityAttention"
OP_VERSION = 1
OPSET = 23
NO_FIDELITY = "no_fidelity"  # function overload for nodes without V0
INPUTS = ["Q", "K", "V", "V0", "attn_mask", "past_key", "past_value"]
OUTPUTS = ["Y", "present_key", "present_value"]
DOC = "NeuTRENO attention: Attention(Q, K, V, attn_mask, past_key, past_value) + lam * (V0 - V)."


def op_schema() -> onnx.defs.OpSchema:
    """The ONNX schema of FidelityAttention (what the checker and the exporter consult)."""
    p = onnx.defs.OpSchema.FormalParameter
    opt = onnx.defs.OpSchema.FormalParameterOption.Optional
    inputs = [
        p("Q", "T"),
        p("K", "T"),
        p("V", "T"),
        p("V0", "T", param_option=opt),
        p("attn_mask", "M", param_option=opt),
        p("past_key", "T", param_option=opt),
        p("past_value", "T", param_option=opt),
    ]
    attrs = [
        onnx.defs.OpSchema.Attribute("lam", helper.make_attribute("lam", 0.0), "fidelity weight"),
        onnx.defs.OpSchema.Attribute(
            "causal",
            helper.make_attribute("causal", 0),
            "bottom-right aligned causal mask (0 or 1)",
        ),
    ]
    return onnx.defs.OpSchema(
        OP_TYPE,
        DOMAIN,
        OP_VERSION,
        DOC,
        inputs=inputs,
        attributes=attrs,
        outputs=[
            p("Y", "T"),
            p("present_key", "T", param_option=opt),
            p("present_value", "T", param_option=opt),
        ],
        type_constraints=[
            ("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], ""),
            ("M", ["tensor(bool)"], ""),
        ],
    )


def register_schema() -> None:
    """Register the schema once per process (idempotent)."""
    try:
        onnx.defs.get_schema(OP_TYPE, OP_VERSION, DOMAIN)
    except onnx.defs.SchemaError:
        onnx.defs.register_schema(op_schema())


def _ref_attr(name: str, ref: str, kind: onnx.AttributeProto.AttributeType) -> onnx.AttributeProto:
    """An attribute that takes the value of the enclosing function's attribute `ref`."""
    return onnx.AttributeProto(name=name, ref_attr_name=ref, type=kind)


def _attention_node(y: str) -> onnx.NodeProto:
    node = helper.make_node(
        "Attention",
        ["Q", "K", "V", "attn_mask", "past_key", "past_value"],
        [y, "present_key", "present_value"],
    )
    node.attribute.append(_ref_attr("is_causal", "causal", onnx.AttributeProto.INT))
    return node


def function_body(opset: int = OPSET, fidelity: bool = True) -> onnx.FunctionProto:
    """FunctionProto of FidelityAttention at `opset`; fidelity=False is the no-V0 overload."""
    nodes = [_attention_node("A" if fidelity else "Y")]
    if fidelity:
        lam = helper.make_node("Constant", [], ["lam_f"])
        lam.attribute.append(_ref_attr("value_float", "lam", onnx.AttributeProto.FLOAT))
        nodes += [
            lam,
            helper.make_node("CastLike", ["lam_f", "Q"], ["lam_t"]),
            helper.make_node("Sub", ["V0", "V"], ["diff"]),
            helper.make_node("Mul", ["lam_t", "diff"], ["fid"]),
            helper.make_node("Add", ["A", "fid"], ["Y"]),
        ]
    fn = helper.make_function(
        DOMAIN,
        OP_TYPE,
        INPUTS,
        OUTPUTS,
        nodes,
        [helper.make_opsetid("", opset)],
        attributes=[],
        doc_string=DOC,
    )
    fn.attribute_proto.extend(
        [helper.make_attribute("lam", 0.0), helper.make_attribute("causal", 0)]
    )
    if not fidelity:
        fn.overload = NO_FIDELITY
    return fn


def has_v0(node: onnx.NodeProto) -> bool:
    return len(node.input) > 3 and node.input[3] != ""


def attention_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The FidelityAttention nodes of the main graph."""
    return [n for n in model.graph.node if n.op_type == OP_TYPE and n.domain == DOMAIN]


def model_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def prune_unused_outputs(model: onnx.ModelProto) -> None:
    """Drop FidelityAttention outputs nothing reads (the vision graphs' present_key/value), so
    the runtime does not copy K and V for a cache nobody uses."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    for node in attention_nodes(model):
        names = [o if o in used else "" for o in node.output]  # ORT needs all 3 slots
        del node.output[:]
        node.output.extend(names)


def attach_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add both FunctionProto bodies at the model's opset, tag no-V0 nodes with their overload,
    prune unused outputs and make sure the model imports the ai.neutreno domain.
    Modifies and returns `model`."""
    opset = model_opset(model)
    if opset < OPSET:
        raise ValueError(f"FidelityAttention needs opset >= {OPSET}, the model has {opset}")
    for node in attention_nodes(model):
        node.overload = "" if has_v0(node) else NO_FIDELITY
    prune_unused_outputs(model)
    kept = [f for f in model.functions if (f.domain, f.name) != (DOMAIN, OP_TYPE)]
    del model.functions[:]
    model.functions.extend(kept + [function_body(opset, True), function_body(opset, False)])
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, OP_VERSION))
    model.ir_version = max(model.ir_version, 10)  # function overloads need IR 10
    return model
