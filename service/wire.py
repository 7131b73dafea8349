"""The front end <-> engine message format: one msgpack header frame, then raw tensor frames.

A message is a ZeroMQ multipart message `[header, *buffers]`. The header is a msgpack map; its
`tensors` entry lists `[name, dtype, shape]` for each following frame, whose bytes are the
C-contiguous array data, sent and received without copying into the header and never pickled
(vLLM's engine core sends large buffers out of band the same way). Errors travel as their
`ServiceError` type and message so the front end raises the same exception the in-process path
would.

Per-batch messages: the engine answers every request of a vision batch that came from one front
end in ONE `results` message (`encode_results`), and sends each front end ONE `step` message per
generation step with every one of its sequences' `SeqOutput`s as plain lists of token ids.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, cast

import msgpack
import numpy as np
import zmq

from service.errors import ServiceError
from service.messages import Feeds, GenerateRequest, Penalties, SamplingParams, SeqOutput

Frames = list[Any]  # bytes, memoryview or zmq.Frame
Result = tuple[int, Feeds | None, dict[str, Any] | None]  # (request id, outputs, error)


class Unencodable(ValueError):
    """A value the wire cannot carry (an int beyond 64 bits, a lone surrogate, ...)."""


def pack(header: dict[str, Any]) -> bytes:
    try:
        return msgpack.packb(header)
    except (TypeError, ValueError, OverflowError, UnicodeEncodeError) as exc:
        raise Unencodable(f"{type(exc).__name__}: {exc}") from None


def encode(header: dict[str, Any], tensors: Feeds | None = None) -> Frames:
    """Header map + arrays -> frames (array data is not copied when already contiguous)."""
    arrays = [(n, np.ascontiguousarray(a)) for n, a in (tensors or {}).items()]
    header = {**header, "tensors": [[n, a.dtype.str, list(a.shape)] for n, a in arrays]}
    return [pack(header), *(_raw(a) for _, a in arrays)]


def decode(frames: Frames) -> tuple[dict[str, Any], Feeds]:
    """Frames -> (header, arrays); arrays are read-only views of the received buffers."""
    header = msgpack.unpackb(_buffer(frames[0]), strict_map_key=False)
    specs = header.pop("tensors", [])
    return header, _arrays(specs, frames[1:])


def encode_results(results: Iterable[Result]) -> Frames:
    """Several requests' outputs (or errors) as one message: `items` lists [id, error, tensor
    specs] per request; the tensor frames follow in that order."""
    items: list[list[Any]] = []
    frames: list[Any] = []
    for rid, outputs, error in results:
        arrays = [(n, np.ascontiguousarray(a)) for n, a in (outputs or {}).items()]
        items.append([rid, error, [[n, a.dtype.str, list(a.shape)] for n, a in arrays]])
        frames.extend(_raw(a) for _, a in arrays)
    return [pack({"op": "results", "items": items}), *frames]


def decode_results(header: dict[str, Any], frames: Frames) -> list[Result]:
    """A `results` message (header already decoded, `frames` after it) -> per-request results."""
    results: list[Result] = []
    at = 0
    for rid, error, specs in header["items"]:
        results.append((rid, _arrays(specs, frames[at : at + len(specs)]), error))
        at += len(specs)
    return results


def _arrays(specs: list[Any], frames: Frames) -> Feeds:
    return {
        name: np.frombuffer(_buffer(frame), np.dtype(dtype)).reshape(shape)
        for (name, dtype, shape), frame in zip(specs, frames, strict=True)
    }


def _raw(array: np.ndarray) -> Any:
    return array.reshape(-1).view(np.uint8).data


# pyzmq's constants as plain ints: its enum flags cost microseconds per message in Python
_FD, _EVENTS, _POLLIN, NOBLOCK = int(zmq.FD), int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)


def socket_fd(sock: zmq.Socket[Any]) -> int:
    """The file descriptor an event loop watches for a ZeroMQ socket (edge-triggered)."""
    return cast(int, sock.getsockopt(_FD))


def readable(sock: zmq.Socket[Any]) -> bool:
    """Whether a message is waiting on `sock` (read until False after every wake-up)."""
    return bool(cast(int, sock.getsockopt(_EVENTS)) & _POLLIN)


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


def request_to_wire(request: GenerateRequest) -> dict[str, Any]:
    return dataclasses.asdict(request)


def request_from_wire(data: dict[str, Any]) -> GenerateRequest:
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
    return GenerateRequest(**fields)


def outputs_to_wire(outputs: list[SeqOutput]) -> list[list[Any]]:
    """A step's outputs for one front end as plain lists (no maps: smaller, faster)."""
    return [
        [o.rid, o.index, o.tokens, o.logprobs, o.top, o.prompt, o.finish, o.error] for o in outputs
    ]


def outputs_from_wire(data: list[list[Any]]) -> list[SeqOutput]:
    return [SeqOutput(*row) for row in data]
