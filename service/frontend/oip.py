"""Open Inference Protocol (KServe v2) tensors: decoding requests, encoding responses.

Supports the JSON tensor form (`data` flat or nested, row-major) and Triton's binary tensor
extension (`Inference-Header-Content-Length` header, `binary_data_size` / `binary_data`
parameters), which is what `tritonclient.http` sends by default. Inputs are checked against the
model's own graph inputs (names, datatypes, rank, fixed dims, finite values) so that no request
reaches ONNX Runtime malformed. The response's size is bounded before the run, from the graph's
output shapes with their dynamic dims bound by the inputs (`response_bound_before`), so an
oversized answer costs no inference; requests with more rows than the model's maximum batch run
as several batches (`split_rows`, `join_rows`).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from pydantic import ValidationError

from service.errors import BadRequest, ResponseTooLarge
from service.frontend.guards import parse_length
from service.frontend.schemas import V2InferRequest, V2ModelMetadata, V2Tensor, V2TensorMeta
from service.messages import ModelInfo, TensorSpec

HEADER_LENGTH = "inference-header-content-length"
DATATYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
NUMPY_TO_V2 = {np.dtype(v): k for k, v in DATATYPES.items()}
MAX_ELEMENTS = 1 << 26
JSON_CHUNK = 16384  # values per json.dumps call when encoding output data


def datatype(spec: TensorSpec) -> str:
    return NUMPY_TO_V2.get(spec.numpy_dtype, "BYTES")


def metadata(model: ModelInfo) -> V2ModelMetadata:
    """The model's tensors with dynamic dims as -1."""

    def meta(spec: TensorSpec) -> V2TensorMeta:
        shape = [d if isinstance(d, int) else -1 for d in spec.shape]
        return V2TensorMeta(name=spec.name, datatype=datatype(spec), shape=shape)

    return V2ModelMetadata(
        name=model.name,
        versions=[model.version],
        inputs=[meta(s) for s in model.inputs],
        outputs=[meta(s) for s in model.outputs],
    )


def parse_request(body: bytes, header_length: str | None) -> tuple[V2InferRequest, bytes]:
    """The JSON part as a validated request, and the binary tail (empty for pure JSON)."""
    split = len(body)
    if header_length is not None:
        parsed = parse_length(header_length)
        if parsed is None or parsed > len(body):
            raise BadRequest(
                f"bad Inference-Header-Content-Length {header_length[:40]!r}: "
                f"not a byte count within the {len(body)}-byte body"
            )
        split = parsed
    try:
        return V2InferRequest.model_validate_json(body[:split]), body[split:]
    except ValidationError as exc:
        raise BadRequest(
            "invalid inference request: "
            + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        ) from None


def decode_inputs(
    model: ModelInfo, request: V2InferRequest, binary: bytes
) -> dict[str, np.ndarray]:
    """Feeds for the model from the request's tensors, validated against the graph inputs."""
    given = {t.name: t for t in request.inputs}
    expected = {s.name: s for s in model.inputs}
    if unknown := sorted(set(given) - set(expected)):
        raise BadRequest(f"unknown input(s) {unknown}; {model.name!r} takes {sorted(expected)}")
    if missing := sorted(set(expected) - set(given)):
        raise BadRequest(f"missing input(s) {missing}")
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in request.inputs:
        array, offset = _decode_tensor(tensor, expected[tensor.name], binary, offset)
        feeds[tensor.name] = array
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data belong to no input")
    return feeds


def _decode_tensor(
    tensor: V2Tensor, spec: TensorSpec, binary: bytes, offset: int
) -> tuple[np.ndarray, int]:
    want = datatype(spec)
    if tensor.datatype != want:
        raise BadRequest(f"input {tensor.name!r} must be {want}, got {tensor.datatype!r}")
    _check_shape(tensor, spec)
    dtype = np.dtype(DATATYPES[want])
    count = math.prod(tensor.shape)
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None:
        if (
            not isinstance(size, int)
            or size != count * dtype.itemsize
            or offset + size > len(binary)
        ):
            raise BadRequest(
                f"input {tensor.name!r}: binary_data_size {size!r} does not match "
                f"shape {tensor.shape} of {want} or the bytes sent"
            )
        array = np.frombuffer(binary, dtype, count, offset).reshape(tensor.shape)
        offset += size
    else:
        array = _from_json(tensor, dtype, count)
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise BadRequest(f"input {tensor.name!r} contains NaN or infinity")
    return array, offset


def _check_shape(tensor: V2Tensor, spec: TensorSpec) -> None:
    if len(tensor.shape) != len(spec.shape) or any(d < 0 for d in tensor.shape):
        raise BadRequest(
            f"input {tensor.name!r} has shape {tensor.shape}; the model expects {list(spec.shape)}"
        )
    for got, dim in zip(tensor.shape, spec.shape, strict=True):
        if isinstance(dim, int) and got != dim:
            raise BadRequest(
                f"input {tensor.name!r} has shape {tensor.shape}; the model "
                f"expects {list(spec.shape)}"
            )
    if math.prod(tensor.shape) > MAX_ELEMENTS:  # exact: Python ints do not overflow
        raise BadRequest(f"input {tensor.name!r} has more than {MAX_ELEMENTS} elements")


def _from_json(tensor: V2Tensor, dtype: np.dtype, count: int) -> np.ndarray:
    if tensor.data is None:
        raise BadRequest(f"input {tensor.name!r} has neither data nor binary_data_size")
    try:
        array = np.asarray(tensor.data, dtype=dtype).reshape(-1)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadRequest(f"input {tensor.name!r}: data is not {dtype.name}: {exc}") from None
    if array.size != count:
        raise BadRequest(f"input {tensor.name!r}: {array.size} values for shape {tensor.shape}")
    return array.reshape(tensor.shape)


def batch_rows(feeds: dict[str, np.ndarray]) -> int:
    """The common leading (batch) dimension of every input."""
    rows = {a.shape[0] for a in feeds.values()}
    if len(rows) != 1 or 0 in rows:
        raise BadRequest(f"inputs disagree on (or have an empty) batch dimension: {sorted(rows)}")
    return rows.pop()


def split_rows(feeds: dict[str, np.ndarray], rows: int) -> list[dict[str, np.ndarray]]:
    """The feeds as consecutive slices of at most `rows` rows (views, no copies)."""
    total = batch_rows(feeds)
    return [{n: a[i : i + rows] for n, a in feeds.items()} for i in range(0, total, rows)]


def join_rows(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The outputs of consecutive row slices as one batch (the slices' order)."""
    if len(parts) == 1:
        return parts[0]
    return {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}


def _output_dims(spec: TensorSpec, bound: dict[str, int]) -> list[int] | None:
    """An output's shape with its dynamic dims taken from `bound` (input dims by name; sums
    such as "past_sequence + sequence" added up); None when a dim stays unknown."""
    dims = []
    for dim in spec.shape:
        if isinstance(dim, int):
            dims.append(dim)
            continue
        terms = [t.strip() for t in dim.split("+")]
        if not all(t in bound or t.isdigit() for t in terms):
            return None
        dims.append(sum(bound[t] if t in bound else int(t) for t in terms))
    return dims


def response_bound_before(
    model: ModelInfo, request: V2InferRequest, feeds: dict[str, np.ndarray], max_bytes: int
) -> None:
    """ResponseTooLarge before the run when the outputs asked for, at the sizes the graph
    gives them for these inputs, cannot fit `max_bytes` (outputs with a dim the inputs do not
    determine are left to `response_bound`, after the run)."""
    bound = {
        dim: size
        for spec in model.inputs
        for dim, size in zip(spec.shape, feeds[spec.name].shape, strict=True)
        if isinstance(dim, str)
    }
    shapes = {}
    for spec in model.outputs:
        dims = _output_dims(spec, bound)
        if dims is not None:
            shapes[spec.name] = (math.prod(dims), spec.numpy_dtype)
    names, as_binary = _selected(model, request, [s.name for s in model.outputs])
    _check_bound({n: shapes[n] for n in names if n in shapes}, names, as_binary, max_bytes, True)


def _selected(
    model: ModelInfo, request: V2InferRequest, outputs: list[str]
) -> tuple[list[str], dict[str, bool]]:
    """Output names to return, in order, and which of them go as binary data."""
    wanted = request.outputs or []
    names = [o.name for o in wanted] or list(outputs)
    if unknown := sorted(set(names) - set(outputs)):
        raise BadRequest(f"unknown output(s) {unknown}; {model.name!r} has {sorted(outputs)}")
    if len(set(names)) != len(names):
        raise BadRequest(f"outputs name a tensor more than once: {names}")
    binary_default = bool((request.parameters or {}).get("binary_data_output", False))
    as_binary = {name: binary_default for name in names}
    as_binary.update(
        {o.name: bool((o.parameters or {}).get("binary_data", binary_default)) for o in wanted}
    )
    return names, as_binary


def _json_width(dtype: np.dtype) -> int:
    """Most characters one element of `dtype` takes in the JSON body, comma included."""
    if dtype.kind == "f":
        return 25  # "-1.2345678901234567e-308,"
    if dtype.kind == "b":
        return 6
    info = np.iinfo(dtype)
    return max(len(str(info.min)), len(str(info.max))) + 1


def response_bound(
    model: ModelInfo, request: V2InferRequest, outputs: dict[str, np.ndarray], max_bytes: int
) -> int:
    """Upper bound of the response's size in bytes (exact for binary tensors, worst-case text
    width for JSON ones); ResponseTooLarge when it exceeds `max_bytes`, BadRequest for unknown
    or repeated output names."""
    names, as_binary = _selected(model, request, list(outputs))
    sizes = {n: (outputs[n].size, outputs[n].dtype) for n in names}
    return _check_bound(sizes, names, as_binary, max_bytes, False)


def _check_bound(
    sizes: dict[str, tuple[int, np.dtype]],
    names: list[str],
    as_binary: dict[str, bool],
    max_bytes: int,
    before: bool,
) -> int:
    """The response's size bound for outputs of (element count, dtype) `sizes`; raises
    ResponseTooLarge over `max_bytes` (`before`: found before the run)."""
    bound = 256 + 512 * len(names)  # envelope, names, shapes
    for name, (count, dtype) in sizes.items():
        bound += count * (dtype.itemsize if as_binary[name] else _json_width(dtype))
    if bound > max_bytes:
        raise ResponseTooLarge(
            f"the response would take up to {bound} bytes, over the limit of {max_bytes} "
            "(NEUTRENO_MAX_RESPONSE_BYTES); ask for fewer outputs or rows, or binary_data"
            + (" (refused before running the model)" if before else "")
        )
    return bound


def encode_response(
    model: ModelInfo, request: V2InferRequest, outputs: dict[str, np.ndarray]
) -> tuple[bytes, int | None]:
    """The response body and, when any tensor is binary, the JSON header's length.

    JSON tensor data is encoded in chunks of `JSON_CHUNK` values: each chunk is one short C
    call, so when this runs in a worker thread the event loop gets the GIL between chunks.
    """
    names, as_binary = _selected(model, request, list(outputs))
    tensors: list[str] = []
    blobs: list[bytes] = []
    for name in names:
        array = np.ascontiguousarray(outputs[name])
        entry: dict[str, Any] = {
            "name": name,
            "datatype": NUMPY_TO_V2[array.dtype],
            "shape": list(array.shape),
        }
        if as_binary[name]:
            blobs.append(array.tobytes())
            entry["parameters"] = {"binary_data_size": len(blobs[-1])}
            tensors.append(_dumps(entry))
        else:
            tensors.append(f'{_dumps(entry)[:-1]},"data":[{_json_data(array)}]}}')
    envelope = {"model_name": model.name, "model_version": model.version}
    tail = "" if request.id is None else f',"id":{_dumps(request.id)}'
    header = f'{_dumps(envelope)[:-1]},"outputs":[{",".join(tensors)}]{tail}}}'.encode()
    return (header + b"".join(blobs), len(header)) if blobs else (header, None)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _json_data(array: np.ndarray) -> str:
    """The flattened values as JSON array text without brackets (NaN and inf as null)."""
    flat = array.reshape(-1)
    return ",".join(
        _dumps(_json_values(flat[i : i + JSON_CHUNK]))[1:-1]
        for i in range(0, flat.size, JSON_CHUNK)
    )


def _json_values(flat: np.ndarray) -> list[Any]:
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        return [v if np.isfinite(v) else None for v in flat.tolist()]
    return flat.tolist()
