"""The front end <-> engine message format: tensors, errors, requests, step outputs and grouped
results round-trip; what cannot be encoded is refused clearly."""

from __future__ import annotations

import numpy as np
import pytest

from service import wire
from service.errors import DeadlineExceeded, QueueFull
from service.messages import GenerateRequest, Penalties, SamplingParams, SeqOutput


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


def test_requests_and_step_outputs_round_trip() -> None:
    request = GenerateRequest(
        1,
        (5, 6),
        8,
        SamplingParams(0.8, 40, 0.9, 1),
        2,
        False,
        True,
        Penalties(0.5, 0.25, 1.2, ((7, -100.0), (9, 2.5)), 3),
    )
    header, _ = wire.decode(wire.encode({"r": wire.request_to_wire(request)}))
    assert wire.request_from_wire(header["r"]) == request
    outputs = [
        SeqOutput(3, 0, [17], [-0.5], [[(17, -0.5), (4, -1.25)]], None, None, None),
        SeqOutput(4, 1, [2], None, None, [(-0.1, [(2, -0.1)])], "stop", None),
        SeqOutput(4, 2, [], None, None, None, "error", wire.error_to_wire(QueueFull("full", 2))),
    ]
    header, _ = wire.decode(wire.encode({"out": wire.outputs_to_wire(outputs)}))
    back = wire.outputs_from_wire(header["out"])
    assert [(o.rid, o.index, o.tokens, o.logprobs, o.finish) for o in back] == [
        (o.rid, o.index, o.tokens, o.logprobs, o.finish) for o in outputs
    ]
    assert back[0].top is not None and [tuple(t) for t in back[0].top[0]] == [
        (17, -0.5),
        (4, -1.25),
    ]
    error = wire.error_from_wire(back[2].error or {})
    assert isinstance(error, QueueFull) and error.headers == {"Retry-After": "2"}


def test_one_results_message_answers_several_requests() -> None:
    """A batch's replies to one front end: outputs of two requests and an error, one message."""
    a = {"logits": np.arange(10, dtype=np.float32).reshape(1, 10)}
    b = {"logits": np.ones((2, 10), np.float32), "similarity": np.zeros((2, 3), np.float32)}
    error = wire.error_to_wire(DeadlineExceeded("late"))
    frames = wire.encode_results([(1, a, None), (2, b, None), (3, None, error)])
    assert len(frames) == 1 + 3  # one header, one frame per tensor
    header, _ = wire.decode(frames[:1])
    results = wire.decode_results(header, [bytes(f) for f in frames[1:]])
    assert [r[0] for r in results] == [1, 2, 3]
    np.testing.assert_array_equal(results[0][1]["logits"], a["logits"])
    assert results[1][1]["similarity"].shape == (2, 3) and results[2][2] == error


def test_unencodable_values_raise_a_clear_error() -> None:
    """An int beyond 64 bits or a lone surrogate cannot cross; `pack` says so (the engine
    then fails that one reply, not its channel)."""
    for bad in ({"seed": 2**70}, {"label": "\ud800"}):
        with pytest.raises(wire.Unencodable):
            wire.encode({"op": "status", "status": bad})
