"""Load-time gate on the token-similarity telemetry output (no torch).

The bundles compute `token_similarity` (B, layers) in every forward pass: per layer a ReduceL2,
divisions and reductions over the hidden states, about 6% of a vit-fashion forward on CPU. ONNX
Runtime runs every node of the graph whatever outputs a caller fetches, so fetching fewer outputs
saves nothing. `gate_output` moves the nodes that only feed the output into the then-branch of an
`If` on a boolean flag, a graph input with an initializer (True), so callers that do not feed the
flag get what the bundle always returned and the service feeds False on the batches it does not
sample; the output is then NaN of the same shape (B, layers), cheap to make.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from export.bundle import SIMILARITY

SIMILARITY_FLAG = "compute_token_similarity"


def _needed(nodes: list[onnx.NodeProto], outputs: set[str]) -> set[int]:
    """Indices of the nodes that `outputs` depend on (graph order is topological)."""
    want, keep = set(outputs), set()
    for i in range(len(nodes) - 1, -1, -1):
        if any(o in want for o in nodes[i].output if o):
            keep.add(i)
            want.update(x for x in nodes[i].input if x)
    return keep


def _batch_nan(model: onnx.ModelProto, out: onnx.ValueInfoProto) -> onnx.GraphProto | None:
    """Else-branch: NaN of shape (batch of the first graph input, layers), or None when the
    output is not (batch, static layers) with the first input's batch dim."""
    dims = out.type.tensor_type.shape.dim
    first = model.graph.input[0].type.tensor_type.shape.dim
    if (
        len(dims) != 2
        or not dims[1].dim_value
        or not first
        or not dims[0].dim_param
        or dims[0].dim_param != first[0].dim_param
    ):
        return None
    p = f"{out.name}_skip_"  # names local to the branch, distinct from the outer graph's
    layers = numpy_helper.from_array(np.array([dims[1].dim_value], np.int64), p + "layers")
    nan = helper.make_tensor(p + "nan", out.type.tensor_type.elem_type, [1], [float("nan")])
    nodes = [
        helper.make_node("Shape", [model.graph.input[0].name], [p + "batch"], end=1),
        helper.make_node("Constant", [], [p + "layers"], value=layers),
        helper.make_node("Concat", [p + "batch", p + "layers"], [p + "shape"], axis=0),
        helper.make_node("ConstantOfShape", [p + "shape"], [p + "out"], value=nan),
    ]
    return helper.make_graph(nodes, "skip_similarity", [], [_renamed(out, p + "out")])


def _renamed(info: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(info)
    copy.name = name
    return copy


def gate_output(
    model: onnx.ModelProto, name: str = SIMILARITY, flag: str = SIMILARITY_FLAG
) -> bool:
    """Put the nodes only `name` needs under If(flag); flag is a bool graph input defaulting to
    True. Modifies `model`; returns False (model unchanged) when the graph has no such output or
    its shape is not (batch, layers)."""
    graph = model.graph
    out = next((o for o in graph.output if o.name == name), None)
    if out is None or any(i.name == flag for i in graph.input):
        return False
    skip = _batch_nan(model, out)
    if skip is None:
        return False
    nodes = list(graph.node)
    rest = _needed(nodes, {o.name for o in graph.output if o.name != name})
    similarity = _needed(nodes, {name}) - rest
    only = [n for i, n in enumerate(nodes) if i in similarity]
    if not only:
        return False
    then = helper.make_graph(only, "similarity", [], [_renamed(out, name + "_then")])
    for node in then.node:
        node.output[:] = [name + "_then" if o == name else o for o in node.output]
    gate = helper.make_node(
        "If", [flag], [name], then_branch=then, else_branch=skip, name="similarity_gate"
    )
    del graph.node[:]
    graph.node.extend([n for i, n in enumerate(nodes) if i in rest] + [gate])
    graph.input.append(helper.make_tensor_value_info(flag, TensorProto.BOOL, []))
    graph.initializer.append(numpy_helper.from_array(np.array(True), flag))
    return True


def is_gated(session: ort.InferenceSession) -> bool:
    """Whether a session's graph went through `gate_output` (takes the flag)."""
    return SIMILARITY_FLAG in {i.name for i in session.get_overridable_initializers()}


def skip_similarity(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`feeds` plus the flag that turns the gated similarity subgraph off for this run."""
    return {**feeds, SIMILARITY_FLAG: np.array(False)}
