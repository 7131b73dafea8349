"""Re-laying a batch's KV cache on the model's device: one small ONNX graph, one run.

When sequences join or leave a running batch, every layer's past key and value (B, heads, P,
head_dim) must lose rows, gain rows and be left-padded to a common length. `KVOps.rebuild` does
all of it for all 2 x layers tensors in ONE ONNX Runtime run of a tiny graph on the same execution
provider as the model, with IO binding: the cache goes from device memory to device memory and
never visits the host (a GPU host used to copy the whole cache over PCIe and back each time).

Per tensor i: out_i = Concat(Pad(Slice(Gather(old_i, keep), start), pads_old), Pad(new_i,
pads_new)) along the batch axis; Slice drops leading columns that are padding in every kept
row, Pad (front of the position axis) brings both parts to one length.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

OPSET = 18
INT64_MAX = np.iinfo(np.int64).max


def rebuild_graph(tensors: int, dtype: np.dtype) -> onnx.ModelProto:
    """The re-lay graph for `tensors` cache tensors of `dtype` (see the module docstring).

    Inputs: keep (K,) int64, start (1,) int64, pads_old (8,) int64, pads_new (8,) int64, then
    old_0..old_{n-1} (B, H, P, D) and new_0..new_{n-1} (Bn, H, Pn, D). Outputs out_0..
    """
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    dims = ["b", "h", "p", "d"]
    inputs = [
        helper.make_tensor_value_info("keep", TensorProto.INT64, ["k"]),
        helper.make_tensor_value_info("start", TensorProto.INT64, [1]),
        helper.make_tensor_value_info("pads_old", TensorProto.INT64, [8]),
        helper.make_tensor_value_info("pads_new", TensorProto.INT64, [8]),
    ]
    outputs, nodes = [], []
    consts = [
        helper.make_tensor("end", TensorProto.INT64, [1], [INT64_MAX]),
        helper.make_tensor("axis2", TensorProto.INT64, [1], [2]),
    ]
    for i in range(tensors):
        inputs.append(helper.make_tensor_value_info(f"old_{i}", elem, dims))
        inputs.append(helper.make_tensor_value_info(f"new_{i}", elem, [f"n{d}" for d in dims]))
        outputs.append(helper.make_tensor_value_info(f"out_{i}", elem, None))
        nodes += [
            helper.make_node("Gather", [f"old_{i}", "keep"], [f"kept_{i}"], axis=0),
            helper.make_node("Slice", [f"kept_{i}", "start", "end", "axis2"], [f"cut_{i}"]),
            helper.make_node("Pad", [f"cut_{i}", "pads_old"], [f"a_{i}"]),
            helper.make_node("Pad", [f"new_{i}", "pads_new"], [f"b_{i}"]),
            helper.make_node("Concat", [f"a_{i}", f"b_{i}"], [f"out_{i}"], axis=0),
        ]
    graph = helper.make_graph(nodes, "kv_rebuild", inputs, outputs, initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    return model


def front_pads(length: int) -> np.ndarray:
    """Pad's pads input for (B, H, P, D): `length` positions before axis 2, nothing else."""
    pads = np.zeros(8, np.int64)
    pads[2] = length
    return pads


class KVOps:
    """The re-lay graph's session on the model's execution provider and device."""

    def __init__(
        self, empty: list[np.ndarray], providers: list[Any], device: str, device_id: int
    ) -> None:
        """`empty`: the cache tensors with no rows and no positions, (0, H, 0, D) each."""
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        model = rebuild_graph(len(empty), empty[0].dtype).SerializeToString()
        self.session = ort.InferenceSession(model, opts, providers=providers)
        self.empty, self.tensors = empty, len(empty)
        self.device, self.device_id = device, device_id

    def rebuild(
        self,
        old: list[Any],
        keep: np.ndarray,
        start: int,
        pad_old: int,
        new: list[Any],
        pad_new: int,
    ) -> list[ort.OrtValue]:
        """Rows `keep` of `old` from column `start`, left-padded by `pad_old`, then `new`
        left-padded by `pad_new`; old/new entries are OrtValues (or numpy arrays)."""
        binding = self.session.io_binding()
        binding.bind_cpu_input("keep", np.ascontiguousarray(keep, np.int64))
        binding.bind_cpu_input("start", np.array([start], np.int64))
        binding.bind_cpu_input("pads_old", front_pads(pad_old))
        binding.bind_cpu_input("pads_new", front_pads(pad_new))
        for prefix, values in (("old", old), ("new", new)):
            for i, value in enumerate(values):
                name = f"{prefix}_{i}"
                if isinstance(value, ort.OrtValue):
                    binding.bind_ortvalue_input(name, value)
                else:
                    binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for i in range(self.tensors):
            binding.bind_output(f"out_{i}", self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        return list(binding.get_outputs())
