"""The front end <-> engine message format: tensors, errors, requests and chunks round-trip."""

from __future__ import annotations

import numpy as np

from service import wire
from service.engine.penalties import Penalties
from service.engine.sampling import SamplingParams
from service.engine.sequence import Chunk, TokenLogprob
from service.errors import DeadlineExceeded, QueueFull
from service.frontend.generation.validation import ValidRequest


def test_tensors_round_trip_bytes_dtype_and_shape() -> None:
    feeds = {
        "pixel_values": np.arange(2 * 1 * 28 * 28, dtype=np.float32).reshape(2, 1, 28, 28),
        "ids": np.array([[1, 2, 3]], np.int64),
        "half": np.ones((3, 0, 4), np.float16),
        "strided": np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2],
    }
    frames = wire.encode({"op": "infer", "id": 7}, feeds)
    assert len(frames) == 1 + len(feeds)
    assert bytes(frames[1]) == feeds["pixel_values"].tobytes()  # raw data, not pickled
    header, out = wire.decode([bytes(f) for f in frames])
    assert header == {"op": "infer", "id": 7}
    for name, value in feeds.items():
        assert out[name].dtype == value.dtype and out[name].shape == value.shape
        np.testing.assert_array_equal(out[name], value)


def test_errors_keep_their_class_status_and_headers() -> None:
    error = wire.error_from_wire(wire.error_to_wire(QueueFull("full", 3)))
    assert isinstance(error, QueueFull) and error.status == 429
    assert error.message == "full" and error.headers == {"Retry-After": "3"}
    assert isinstance(
        wire.error_from_wire(wire.error_to_wire(DeadlineExceeded("late"))), DeadlineExceeded
    )


def test_requests_and_chunks_round_trip() -> None:
    request = ValidRequest(
        1,
        "In the",
        (5, 6),
        8,
        SamplingParams(0.8, 40, 0.9, 1),
        ("\n",),
        2,
        False,
        True,
        Penalties(0.5, 0.25, 1.2, ((7, -100.0), (9, 2.5)), 3),
    )
    header, _ = wire.decode(wire.encode({"r": wire.request_to_wire(request)}))
    assert wire.request_from_wire(header["r"]) == request
    chunk = Chunk(
        1,
        " beginning",
        [TokenLogprob(" beginning", -0.5, {" beginning": -0.5}, 6)],
        "length",
        QueueFull("full", 2),
        3,
    )
    header, _ = wire.decode(wire.encode({"c": wire.chunk_to_wire(chunk)}))
    back = wire.chunk_from_wire(header["c"])
    assert (back.index, back.text, back.logprobs, back.finish_reason, back.new_tokens) == (
        1,
        " beginning",
        chunk.logprobs,
        "length",
        3,
    )
    assert isinstance(back.error, QueueFull) and back.error.headers == {"Retry-After": "2"}
