"""The greedy head added to language-model sessions at load (export.greedy): the argmax of the
last position's logits, first of equal maxima as numpy, on the shipped LM and on ties; vision
graphs and bundles on disk are left as they are."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from support.export_helpers import ROOT

from export.bundle import GREEDY_IDS, INPUT_IDS, LOGITS
from export.greedy import add_greedy_ids
from export.runtime import empty_past, session

CLASSIFIER = ROOT / "model_repository/fashion-classifier/1/model.onnx"
LM = ROOT / "model_repository/kjv-lm/2/model.onnx"


def test_shipped_lm_session_gives_the_argmax_of_the_last_position() -> None:
    sess = session(LM)
    assert [o.name for o in sess.get_outputs()][-1] == GREEDY_IDS
    assert GREEDY_IDS not in {o.name for o in session(LM, fused=False).get_outputs()}
    ids = np.array([[0, 5, 6, 7], [9, 10, 11, 12]], np.int64)
    mask = np.array([[0, 1, 1, 1], [1, 1, 1, 1]], np.int64)  # row 0 left-padded
    feed = {INPUT_IDS: ids, "attention_mask": mask}
    for i, (k, v) in enumerate(empty_past(sess, 2)):
        feed[f"past_key_values.{i}.key"], feed[f"past_key_values.{i}.value"] = k, v
    logits, greedy = sess.run([LOGITS, GREEDY_IDS], feed)
    assert greedy.dtype == np.int64 and greedy.shape == (2,)
    np.testing.assert_array_equal(greedy, np.argmax(logits[:, -1], axis=-1))


def test_ties_pick_the_first_maximum_as_numpy_does() -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["scores"], [LOGITS])],
        "lm",
        [
            helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT64, ["b", "t"]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["b", "t", "v"]),
        ],
        [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["b", "t", "v"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    assert add_greedy_ids(model)
    assert not add_greedy_ids(model)  # once
    scores = np.zeros((3, 2, 6), np.float32)
    scores[0, -1, [2, 4]] = 1.0  # a tie: 2 first
    scores[1, -1, [5, 0]] = 3.0  # a tie: 0 first
    scores[1, 0, 3] = 9.0  # an earlier position counts for nothing
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.zeros((3, 2), np.int64)
    (greedy,) = sess.run([GREEDY_IDS], {INPUT_IDS: ids, "scores": scores})
    np.testing.assert_array_equal(greedy, [2, 0, 0])
    np.testing.assert_array_equal(greedy, np.argmax(scores[:, -1], axis=-1))


def test_vision_graphs_get_no_greedy_head() -> None:
    model = onnx.load(str(CLASSIFIER))
    outputs = [o.name for o in model.graph.output]
    assert not add_greedy_ids(model)
    assert [o.name for o in model.graph.output] == outputs
    assert GREEDY_IDS not in {o.name for o in session(CLASSIFIER).get_outputs()}
