"""The front end <-> engine message format: one msgpack header frame, then raw tensor frames.

A message is a ZeroMQ multipart message `[header, *buffers]`. The header is a msgpack map; its
`tensors` entry lists `[name, dtype, shape]` for each following frame, whose bytes are the
C-contiguous array data, sent and received without copying into the header and never pickled
(vLLM's engine core sends large buffers out of band the same way). Errors travel as their
`ServiceError` type and message so the front end raises the same exception the in-process path
would. Generation chunks and validated requests travel as plain maps.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import numpy as np

from service.engine.penalties import Penalties
from service.engine.sampling import SamplingParams
from service.engine.sequence import Chunk, TokenLogprob
from service.errors import ServiceError
from service.frontend.generation.validation import ValidRequest

Feeds = dict[str, np.ndarray]
Frames = list[Any]  # bytes, memoryview or zmq.Frame


def encode(header: dict[str, Any], tensors: Feeds | None = None) -> Frames:
    """Header map + arrays -> frames (array data is not copied when already contiguous)."""
    arrays = [(n, np.ascontiguousarray(a)) for n, a in (tensors or {}).items()]
    header = {**header, "tensors": [[n, a.dtype.str, list(a.shape)] for n, a in arrays]}
    return [msgpack.packb(header), *(a.reshape(-1).view(np.uint8).data for _, a in arrays)]


def decode(frames: Frames) -> tuple[dict[str, Any], Feeds]:
    """Frames -> (header, arrays); arrays are read-only views of the received buffers."""
    header = msgpack.unpackb(_buffer(frames[0]), strict_map_key=False)
    tensors = {
        name: np.frombuffer(_buffer(frame), np.dtype(dtype)).reshape(shape)
        for (name, dtype, shape), frame in zip(header.pop("tensors"), frames[1:], strict=True)
    }
    return header, tensors


def _buffer(frame: Any) -> Any:
    return frame.buffer if hasattr(frame, "buffer") else frame


def _error_classes() -> dict[str, type[ServiceError]]:
    found: dict[str, type[ServiceError]] = {}
    pending = [ServiceError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.type, cls)
        pending.extend(cls.__subclasses__())
    return found


def error_to_wire(exc: ServiceError) -> dict[str, Any]:
    return {"type": exc.type, "message": exc.message, "headers": exc.headers}


def error_from_wire(data: dict[str, Any]) -> ServiceError:
    """The same ServiceError subclass (status, type, headers) the engine raised."""
    cls = _error_classes().get(data["type"], ServiceError)
    exc = cls.__new__(cls)
    ServiceError.__init__(exc, data["message"], headers=data["headers"])
    return exc


def request_to_wire(request: ValidRequest) -> dict[str, Any]:
    return dataclasses.asdict(request)


def request_from_wire(data: dict[str, Any]) -> ValidRequest:
    fields = dict(data)
    fields["sampling"] = SamplingParams(**fields["sampling"])
    penalties = fields["penalties"]
    fields["penalties"] = Penalties(
        **{
            **penalties,
            "logit_bias": tuple(
                (int(token), float(bias)) for token, bias in penalties["logit_bias"]
            ),
        }
    )
    fields["prompt_ids"] = tuple(fields["prompt_ids"])
    fields["stop"] = tuple(fields["stop"])
    return ValidRequest(**fields)


def chunk_to_wire(chunk: Chunk) -> dict[str, Any]:
    return {
        "index": chunk.index,
        "text": chunk.text,
        "finish_reason": chunk.finish_reason,
        "new_tokens": chunk.new_tokens,
        "logprobs": [[t.token, t.logprob, t.top, t.offset] for t in chunk.logprobs],
        "error": None if chunk.error is None else error_to_wire(chunk.error),
    }


def chunk_from_wire(data: dict[str, Any]) -> Chunk:
    error = data["error"]
    return Chunk(
        data["index"],
        data["text"],
        [TokenLogprob(*t) for t in data["logprobs"]],
        data["finish_reason"],
        None if error is None else error_from_wire(error),
        data["new_tokens"],
    )
