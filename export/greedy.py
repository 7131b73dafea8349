"""Load-time greedy head for language-model graphs: the next token's id computed where the
model runs, so a greedy decode step brings B ids to the host instead of B x vocab logits.

`add_greedy_ids` appends GREEDY_IDS = ArgMax(logits[:, -1, :]) (B,) int64 to a copy of a
text-generation graph when a session is created (bundles on disk never carry it). ArgMax
keeps the first of equal maxima, as numpy's argmax does, so greedy decoding picks the same ids
whether it reads this output or the logits. Under CUDA the B x vocab floats of a step then stay
on the device (about 1 MB a step at 64 rows of the 4,096-token vocabulary).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.bundle import GREEDY_IDS, INPUT_IDS, LOGITS


def add_greedy_ids(model: onnx.ModelProto) -> bool:
    """Append the GREEDY_IDS output to `model` (modified in place) if it is a language model
    (input_ids in, logits (batch, sequence, vocab) out); whether it did."""
    graph = model.graph
    logits = next((o for o in graph.output if o.name == LOGITS), None)
    if (
        logits is None
        or all(i.name != INPUT_IDS for i in graph.input)
        or any(o.name == GREEDY_IDS for o in graph.output)
        or len(logits.type.tensor_type.shape.dim) != 3
    ):
        return False
    last = f"{GREEDY_IDS}/last"
    graph.initializer.append(numpy_helper.from_array(np.array(-1, np.int64), last))
    graph.node.extend(
        [
            helper.make_node("Gather", [LOGITS, last], [f"{GREEDY_IDS}/logits"], axis=1),
            helper.make_node("ArgMax", [f"{GREEDY_IDS}/logits"], [GREEDY_IDS], axis=-1, keepdims=0),
        ]
    )
    graph.output.append(helper.make_tensor_value_info(GREEDY_IDS, TensorProto.INT64, ["batch"]))
    return True
