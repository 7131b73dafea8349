"""ModelInfer tensors: protobuf messages in and out, through `service.frontend.oip`.

A gRPC request is turned into the same `V2InferRequest` (plus binary tail) the HTTP route
parses, so both protocols share every tensor check (names, datatypes, rank, fixed dims,
element and byte counts, finite values) in `oip.decode_inputs`, and the response size bound in
`oip.response_bound`. Raw tensors (`raw_input_contents`, what tritonclient.grpc sends) map onto
the binary tensor extension's `binary_data_size`; typed `contents` onto JSON `data`.

Outputs go back as `raw_output_contents`, as Triton answers, unless the request parameter
`binary_data_output` is false, which asks for typed `contents` instead (FP16 has no typed form).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import ValidationError

from service.errors import BadRequest
from service.frontend import oip
from service.frontend.grpc import inference_pb2 as pb
from service.frontend.schemas import V2InferRequest

# The InferTensorContents field of each datatype (KServe's table; FP16 and BF16 have none).
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
BINARY_OUTPUT = "binary_data_output"


def parameter(value: pb.InferParameter) -> Any:
    """An InferParameter's value (None when no kind is set)."""
    kind = value.WhichOneof("parameter_choice")
    return None if kind is None else getattr(value, kind)


def parameters(entries: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    return {key: parameter(value) for key, value in entries.items()}


def as_v2(request: pb.ModelInferRequest) -> tuple[V2InferRequest, bytes]:
    """The request as the HTTP route's validated request and binary tail (BadRequest when it
    is malformed)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "send one per input, in order, or none"
        )
    inputs = []
    for i, tensor in enumerate(request.inputs):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
            "parameters": parameters(tensor.parameters),
        }
        if raw:
            if tensor.HasField("contents"):
                raise BadRequest(
                    f"input {tensor.name!r} has contents although raw_input_contents is used"
                )
            entry["parameters"]["binary_data_size"] = len(raw[i])
        elif tensor.HasField("contents"):
            field = CONTENTS.get(tensor.datatype)
            entry["data"] = list(getattr(tensor.contents, field)) if field else None
        inputs.append(entry)
    params = parameters(request.parameters)
    binary = params.get(BINARY_OUTPUT, True)
    if not isinstance(binary, bool):
        raise BadRequest(f"parameter {BINARY_OUTPUT!r} must be a bool, got {binary!r}")
    try:
        v2 = V2InferRequest.model_validate(
            {
                "id": request.id or None,
                "parameters": {**params, BINARY_OUTPUT: binary},
                "inputs": inputs,
                "outputs": [{"name": o.name} for o in request.outputs] or None,
            }
        )
    except ValidationError as exc:
        raise BadRequest(
            "invalid inference request: "
            + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        ) from None
    return v2, raw[0] if len(raw) == 1 else b"".join(raw)


def check_outputs(model: str, names: list[str], request: V2InferRequest) -> None:
    """BadRequest for requested outputs the model does not have, before it runs (the HTTP
    route finds out after the run, in `oip.response_bound`)."""
    wanted = [o.name for o in request.outputs or []]
    if unknown := sorted(set(wanted) - set(names)):
        raise BadRequest(f"unknown output(s) {unknown}; {model!r} has {sorted(names)}")


def response(
    name: str, version: str, request: V2InferRequest, outputs: dict[str, np.ndarray]
) -> pb.ModelInferResponse:
    """The ModelInferResponse for the selected outputs, raw or typed as the request asked
    (the caller has checked the names and the size with `oip.response_bound`)."""
    names = [o.name for o in request.outputs or []] or list(outputs)
    raw = bool((request.parameters or {}).get(BINARY_OUTPUT, True))
    reply = pb.ModelInferResponse(model_name=name, model_version=version, id=request.id or "")
    for output in names:
        array = np.ascontiguousarray(outputs[output])
        datatype = oip.NUMPY_TO_V2[array.dtype]
        tensor = reply.outputs.add(name=output, datatype=datatype, shape=array.shape)
        if raw:
            reply.raw_output_contents.append(array.tobytes())
        elif (field := CONTENTS.get(datatype)) is not None:
            getattr(tensor.contents, field).extend(array.reshape(-1).tolist())
        else:
            raise BadRequest(f"output {output!r} is {datatype}, which travels only as raw contents")
    return reply
