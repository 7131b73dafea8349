"""The Open Inference Protocol over gRPC, with the real clients: tritonclient.grpc (sync and
aio) and plain grpc channels, against one live `neutreno serve` (two front ends sharing the
gRPC port) for the whole module.

Covers every RPC, raw and typed tensors, the API key, RESOURCE_EXHAUSTED with retry information
under overload, deadlines and cancellation, grpc.health.v1, model control, the request log's
request and trace ids, metrics, a hostile-input pass (no call may crash a front end or get an
INTERNAL status), and, last, the drain of calls in flight on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.grpc.aio as tca
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.service_helpers import MEAN, STD, start_server
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from bench.live_server import LiveServer, free_port

KEY = "grpc-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}
METADATA = tuple(AUTH.items())
MODEL = "fashion-classifier"
LM = "tiny-lm"
SERVICE = "/inference.GRPCInferenceService/"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
MAX_RESPONSE = 4 << 20


class Live:
    """The module's server and where its gRPC service listens."""

    def __init__(self, server: LiveServer, grpc_port: int) -> None:
        self.server = server
        self.target = f"127.0.0.1:{grpc_port}"

    def client(self) -> tc.InferenceServerClient:
        return tc.InferenceServerClient(self.target)


@pytest.fixture(scope="module")
def live(lm_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    port = free_port()
    server = start_server(
        lm_repository,
        {
            "NEUTRENO_WORKERS": "2",
            "NEUTRENO_GRPC_PORT": str(port),
            "NEUTRENO_API_KEY": KEY,
            "NEUTRENO_MODEL_CONTROL": "explicit",
            "NEUTRENO_MAX_QUEUE_SIZE": "2",
            "NEUTRENO_MAX_QUEUE_DELAY_MS": "100",
            "NEUTRENO_MAX_BODY_BYTES": str(1 << 20),
            "NEUTRENO_MAX_RESPONSE_BYTES": str(MAX_RESPONSE),
            "NEUTRENO_LOG_FORMAT": "json",
            "NEUTRENO_LOG_LEVEL": "info",
            "NEUTRENO_DRAIN_TIMEOUT_S": "20",
            "OTEL_TRACES_EXPORTER": "console",  # spans as JSON on the server's output
        },
        log=tmp_path_factory.mktemp("grpc") / "server.log",
    )
    try:
        server.wait_ready()
        live = Live(server, port)
        server.wait_until(lambda: _health(live.target) == "SERVING", "gRPC health SERVING")
        yield live
    finally:
        server.stop()
    output = server.output()
    assert "Traceback" not in output and "gRPC: cannot listen" not in output, server.log_tail()


def _health(target: str, service: str = "") -> str:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def _images(fashion, n: int) -> np.ndarray:
    return ((fashion[0][:n].astype(np.float32) / 255.0 - MEAN) / STD)[:, None]


def _input(x: np.ndarray) -> tc.InferInput:
    tensor = tc.InferInput("pixel_values", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def _raw_call(
    target: str, method: str, body: bytes, metadata=METADATA, timeout: float = 10
) -> grpc.StatusCode:
    """Send `body` as-is to `method`; the status code it gets."""
    with grpc.insecure_channel(target) as channel:
        try:
            channel.unary_unary(SERVICE + method)(body, metadata=metadata, timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def _infer_request(**fields) -> service_pb2.ModelInferRequest:
    return service_pb2.ModelInferRequest(model_name=MODEL, **fields)


def test_server_rpcs_and_health(live: Live) -> None:
    client = live.client()
    assert client.is_server_live() and client.is_server_ready()  # open, as /v2/health/*
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "neutreno" and "binary_tensor_data" in meta["extensions"]
    assert _health(live.target) == "SERVING"
    assert _health(live.target, "inference.GRPCInferenceService") == "SERVING"
    assert _health(live.target, "no.such.Service") == "NOT_FOUND"


def test_model_rpcs(live: Live) -> None:
    client = live.client()
    assert client.is_model_ready(MODEL, headers=AUTH)
    assert client.is_model_ready(MODEL, "1", headers=AUTH)
    meta = client.get_model_metadata(MODEL, headers=AUTH, as_json=True)
    assert meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [
        {"name": "pixel_values", "datatype": "FP32", "shape": ["-1", "1", "28", "28"]}
    ]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "token_similarity"]
    http = httpx.get(f"{live.server.url}/v2/models/{MODEL}", headers=AUTH).json()
    assert [int(d) for d in meta["inputs"][0]["shape"]] == http["inputs"][0]["shape"]
    for call in (
        lambda: client.get_model_metadata("no-such-model", headers=AUTH),
        lambda: client.is_model_ready(MODEL, "7", headers=AUTH),
    ):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == "StatusCode.NOT_FOUND"


def test_api_key_guards_model_rpcs(live: Live) -> None:
    client = live.client()
    for headers in (None, {"authorization": "Bearer wrong"}, {"authorization": KEY}):
        for call in (
            lambda h=headers: client.get_model_metadata(MODEL, headers=h),
            lambda h=headers: client.get_model_repository_index(headers=h),
            lambda h=headers: client.infer(
                MODEL, [_input(np.zeros((1, 1, 28, 28), "f4"))], headers=h
            ),
        ):
            with pytest.raises(InferenceServerException) as info:
                call()
            assert info.value.status() == "StatusCode.UNAUTHENTICATED"
    assert client.is_server_live()  # health and server RPCs stay open


def test_infer_binary_matches_http(live: Live, fashion) -> None:
    x = _images(fashion, 4)
    client = live.client()
    result = client.infer(
        MODEL,
        [_input(x)],
        outputs=[tc.InferRequestedOutput("logits")],
        request_id="req-7",
        headers=AUTH,
    )
    response = result.get_response()
    assert response.model_name == MODEL and response.model_version == "1"
    assert response.id == "req-7" and [o.name for o in response.outputs] == ["logits"]
    logits = result.as_numpy("logits")
    http = httpx.post(
        f"{live.server.url}/v2/models/{MODEL}/infer",
        headers=AUTH,
        json={
            "inputs": [
                {
                    "name": "pixel_values",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "data": x.ravel().tolist(),
                }
            ]
        },
    ).json()
    expected = np.asarray(http["outputs"][0]["data"], np.float32).reshape(logits.shape)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    every = client.infer(MODEL, [_input(x)], headers=AUTH)  # no outputs named: all of them
    assert every.as_numpy("token_similarity").shape == (4, 1)


def test_infer_bounded_before_the_run_and_split_into_batches(live: Live, fashion) -> None:
    """As /v2 infer (service/frontend/infer.py): a response that cannot fit
    NEUTRENO_MAX_RESPONSE_BYTES is refused before anything runs, and more rows than
    NEUTRENO_MAX_BATCH_SIZE (32) run as several batches, answered as one."""
    client, server = live.client(), live.server
    segmenter_runs = server.metric("neutreno_batch_size_count", model="fashion-segmenter")
    images = np.zeros((40, 1, 64, 64), np.float32)  # logits: 40 x 10 x 64 x 64 x 4 = 6.6 MB
    with pytest.raises(InferenceServerException) as refused:
        client.infer(
            "fashion-segmenter",
            [_input(images)],
            outputs=[tc.InferRequestedOutput("logits")],
            headers=AUTH,
        )
    assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "before running" in refused.value.message()
    assert server.metric("neutreno_batch_size_count", model="fashion-segmenter") == segmenter_runs

    def over_32() -> float:
        every = server.metric("neutreno_batch_size_count", model=MODEL)
        return every - server.metric("neutreno_batch_size_bucket", model=MODEL, le="32.0")

    x = _images(fashion, 40)
    before = over_32()
    logits = client.infer(MODEL, [_input(x)], headers=AUTH).as_numpy("logits")
    assert logits.shape == (40, 10) and over_32() == before
    first = client.infer(MODEL, [_input(x[:4])], headers=AUTH).as_numpy("logits")
    np.testing.assert_allclose(logits[:4], first, rtol=1e-4, atol=1e-4)


def test_raw_language_model_infer(live: Live) -> None:
    """ModelInfer on a language model's own graph: prefill logits as /v2 infer gives them, and
    the same limits (ids within the vocabulary, sequences within the context)."""
    client = live.client()
    meta = client.get_model_metadata(LM, headers=AUTH, as_json=True)
    ids = np.array([[5, 6, 7, 8]], np.int64)
    tensors = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    for spec in meta["inputs"][2:]:  # the empty past of every layer
        heads, head_dim = int(spec["shape"][1]), int(spec["shape"][3])
        tensors[spec["name"]] = np.zeros((1, heads, 0, head_dim), np.float32)

    def inputs(arrays: dict[str, np.ndarray]) -> list[tc.InferInput]:
        out = []
        for name, array in arrays.items():
            tensor = tc.InferInput(
                name, list(array.shape), "INT64" if array.dtype.kind == "i" else "FP32"
            )
            tensor.set_data_from_numpy(array)
            out.append(tensor)
        return out

    logits = client.infer(
        LM, inputs(tensors), outputs=[tc.InferRequestedOutput("logits")], headers=AUTH
    ).as_numpy("logits")
    assert logits.shape == (1, 4, 512)
    http = httpx.post(
        f"{live.server.url}/v2/models/{LM}/infer",
        headers=AUTH,
        json={
            "inputs": [
                {
                    "name": n,
                    "datatype": "INT64" if a.dtype.kind == "i" else "FP32",
                    "shape": list(a.shape),
                    "data": a.ravel().tolist(),
                }
                for n, a in tensors.items()
            ],
            "outputs": [{"name": "logits"}],
        },
    ).json()
    expected = np.asarray(http["outputs"][0]["data"], np.float32).reshape(logits.shape)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    outside = {**tensors, "input_ids": np.array([[5, 6, 7, 512]], np.int64)}  # vocab is 512
    with pytest.raises(InferenceServerException) as refused:
        client.infer(LM, inputs(outside), headers=AUTH)
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_typed_contents_in_and_out(live: Live, fashion) -> None:
    x = _images(fashion, 2)
    raw = live.client().infer(MODEL, [_input(x)], headers=AUTH).as_numpy("logits")
    request = _infer_request(
        inputs=[
            service_pb2.ModelInferRequest.InferInputTensor(
                name="pixel_values",
                datatype="FP32",
                shape=x.shape,
                contents=service_pb2.InferTensorContents(fp32_contents=x.ravel()),
            )
        ],
        parameters={"binary_data_output": service_pb2.InferParameter(bool_param=False)},
    )
    with grpc.insecure_channel(live.target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelInfer(request, metadata=METADATA, timeout=10)
        assert not reply.raw_output_contents
        logits = next(o for o in reply.outputs if o.name == "logits")
        typed = np.asarray(logits.contents.fp32_contents, np.float32).reshape(logits.shape)
        np.testing.assert_allclose(typed, raw, rtol=1e-6)
        # typed in, raw out (the default)
        del request.parameters["binary_data_output"]
        reply = stub.ModelInfer(request, metadata=METADATA, timeout=10)
        assert len(reply.raw_output_contents) == len(reply.outputs) == 2
        np.testing.assert_array_equal(
            np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(raw.shape), raw
        )


def test_aio_client_and_metrics(live: Live, fashion) -> None:
    x = _images(fashion, 1)
    before = live.server.metric("neutreno_requests_total", endpoint="grpc_infer", status="200")

    async def run() -> list[np.ndarray]:
        client = tca.InferenceServerClient(live.target)
        try:
            assert await client.is_server_ready()
            assert await client.is_model_ready(MODEL, headers=AUTH)
            results = await asyncio.gather(
                *(client.infer(MODEL, [_input(x)], headers=AUTH) for _ in range(2))
            )
            return [r.as_numpy("logits") for r in results]
        finally:
            await client.close()

    first, second = asyncio.run(run())
    np.testing.assert_array_equal(first, second)
    after = live.server.metric("neutreno_requests_total", endpoint="grpc_infer", status="200")
    assert after - before == 2
    assert live.server.metric("neutreno_requests_total", endpoint="grpc_infer", model=MODEL) >= 2


def test_request_and_trace_ids_reach_the_log(live: Live) -> None:
    x = np.zeros((1, 1, 28, 28), np.float32)
    headers = {
        **AUTH,
        "x-request-id": "grpc-req-42",
        "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01",
    }
    live.client().infer(MODEL, [_input(x)], headers=headers)

    def logged() -> bool:
        for line in live.server.output().splitlines():
            if line.startswith("{") and "grpc-req-42" in line:
                record = json.loads(line)
                assert record["trace_id"] == TRACE_ID and record["status"] == 200
                assert record["route"] == SERVICE + "ModelInfer" and record["model"] == MODEL
                return True
        return False

    live.server.wait_until(
        logged, "the call's access record", timeout=time.perf_counter() - live.server.started + 10
    )
    # the SERVER span continues the caller's trace (OTEL_TRACES_EXPORTER=console prints it)
    span = re.compile(
        rf'"name": "POST {re.escape(SERVICE)}ModelInfer",\s*'
        rf'"context": {{\s*"trace_id": "0x{TRACE_ID}"'
    )
    live.server.wait_until(
        lambda: span.search(live.server.output()) is not None,
        "the call's SERVER span",
        timeout=time.perf_counter() - live.server.started + 10,
    )


def test_repository_index_unload_and_load(live: Live) -> None:
    client = live.client()
    index = client.get_model_repository_index(headers=AUTH, as_json=True)["models"]
    assert {(m["name"], m["state"]) for m in index} >= {
        (MODEL, "READY"),
        ("fashion-segmenter", "READY"),
    }
    client.unload_model("fashion-segmenter", headers=AUTH)
    try:
        with pytest.raises(InferenceServerException) as info:
            client.get_model_metadata("fashion-segmenter", headers=AUTH)
        assert info.value.status() == "StatusCode.NOT_FOUND"
        ready = client.get_model_repository_index(headers=AUTH, as_json=True)
        assert "fashion-segmenter" not in {
            m["name"] for m in ready["models"] if m.get("state") == "READY"
        }
    finally:
        client.load_model("fashion-segmenter", headers=AUTH)
    assert client.is_model_ready("fashion-segmenter", headers=AUTH)
    with pytest.raises(InferenceServerException) as info:
        client.load_model("fashion-segmenter", headers=AUTH, config='{"max_batch_size": 4}')
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_deadline_and_cancellation(live: Live, fashion) -> None:
    x = _images(fashion, 1)
    client = live.client()
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL, [_input(x)], headers=AUTH, client_timeout=1e-4)
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"

    done = threading.Event()
    outcome: list[object] = []

    def callback(result, error) -> None:
        outcome.append(error if error is not None else result)
        done.set()

    context = client.async_infer(MODEL, [_input(x)], callback, headers=AUTH)
    context.cancel()
    assert done.wait(10)
    if isinstance(outcome[0], InferenceServerException):
        assert outcome[0].status() == "StatusCode.CANCELLED"

    async def cancel_aio() -> None:
        aio = tca.InferenceServerClient(live.target)
        try:
            tasks = [
                asyncio.create_task(aio.infer(MODEL, [_input(x)], headers=AUTH)) for _ in range(2)
            ]
            await asyncio.sleep(0.002)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await aio.close()

    asyncio.run(cancel_aio())
    _wait_admitted(live, fashion)  # cancelled calls leave the queue as their batch runs


def _one_image(fashion) -> bytes:
    """A serialized ModelInfer request for one image as raw contents."""
    return _infer_request(
        inputs=[
            service_pb2.ModelInferRequest.InferInputTensor(
                name="pixel_values", datatype="FP32", shape=[1, 1, 28, 28]
            )
        ],
        raw_input_contents=[_images(fashion, 1).tobytes()],
    ).SerializeToString()


def _wait_admitted(live: Live, fashion) -> None:
    """Wait until a ModelInfer call succeeds (the queue of 2 has room again) and the front
    ends' view of the queue has caught up."""
    body = _one_image(fashion)
    live.server.wait_until(
        lambda: _raw_call(live.target, "ModelInfer", body) == grpc.StatusCode.OK,
        "a ModelInfer call admitted",
        timeout=time.perf_counter() - live.server.started + 10,
    )
    time.sleep(0.6)  # every front end's view of the queue (polled each 0.25 s) is empty again


def test_overload_is_resource_exhausted_with_retry_info(live: Live, fashion) -> None:
    """The queue limit (NEUTRENO_MAX_QUEUE_SIZE=2, with batches waiting up to 100 ms for
    batch-mates) refuses most of a burst, as HTTP answers 429 with Retry-After."""
    from google.rpc import error_details_pb2, status_pb2

    body = _one_image(fashion)

    async def burst() -> list[grpc.aio.AioRpcError | None]:
        async with grpc.aio.insecure_channel(live.target) as channel:
            method = channel.unary_unary(SERVICE + "ModelInfer")

            async def one() -> grpc.aio.AioRpcError | None:
                try:
                    await method(body, metadata=METADATA, timeout=20)
                except grpc.aio.AioRpcError as exc:
                    return exc
                return None

            return await asyncio.gather(*(one() for _ in range(48)))

    outcomes = asyncio.run(burst())
    refused = [e for e in outcomes if e is not None]
    assert refused and len(refused) < len(outcomes), [e.code() for e in refused[:3]]
    assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    trailers = dict(refused[0].trailing_metadata())
    assert int(trailers["retry-after"]) >= 1
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info) and info.retry_delay.seconds >= 1
    _wait_admitted(live, fashion)  # the service recovers once the burst has drained
    assert live.client().is_server_ready()


def _hostile_requests(
    fashion,
) -> list[tuple[str, bytes | service_pb2.ModelInferRequest, grpc.StatusCode]]:
    pixels = _images(fashion, 1)
    tensor = service_pb2.ModelInferRequest.InferInputTensor

    def infer(shape, datatype="FP32", raw=(pixels.tobytes(),), **fields):
        return _infer_request(
            inputs=[tensor(name="pixel_values", datatype=datatype, shape=shape)],
            raw_input_contents=list(raw),
            **fields,
        )

    def typed(values: list[float]) -> service_pb2.ModelInferRequest.InferInputTensor:
        contents = service_pb2.InferTensorContents(fp32_contents=values)
        return tensor(name="pixel_values", datatype="FP32", shape=[1, 1, 28, 28], contents=contents)

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    nan = np.full((1, 1, 28, 28), np.nan, np.float32).tobytes()
    return [
        ("garbage bytes", b"\xff\xff\xff\xff\x0f", invalid),
        ("truncated message", infer([1, 1, 28, 28]).SerializeToString()[:-7], invalid),
        ("huge shape", infer([1 << 40, 1, 28, 28]), invalid),
        ("huge element count", infer([1 << 20, 1, 1 << 20, 28]), invalid),
        ("max int64 dims", infer([(1 << 63) - 1] * 4), invalid),
        ("negative dim", infer([-1, 1, 28, 28]), invalid),
        ("zero rows", infer([0, 1, 28, 28], raw=(b"",)), invalid),
        ("wrong rank", infer([784]), invalid),
        ("too many dims", infer([1] * 40), invalid),
        ("wrong datatype", infer([1, 1, 28, 28], "FP64"), invalid),
        ("unknown datatype", infer([1, 1, 28, 28], "COMPLEX128"), invalid),
        ("byte count short", infer([1, 1, 28, 28], raw=(pixels.tobytes()[:-4],)), invalid),
        ("more raw than inputs", infer([1, 1, 28, 28], raw=(pixels.tobytes(),) * 2), invalid),
        ("NaN pixels", infer([1, 1, 28, 28], raw=(nan,)), invalid),
        ("no data", infer([1, 1, 28, 28], raw=()), invalid),
        (
            "unknown input",
            _infer_request(
                inputs=[tensor(name="x", datatype="FP32", shape=[1])],
                raw_input_contents=[b"\0" * 4],
            ),
            invalid,
        ),
        ("no inputs", _infer_request(), invalid),
        (
            "unknown output",
            infer(
                [1, 1, 28, 28],
                outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="nope")],
            ),
            invalid,
        ),
        (
            "typed values short",
            _infer_request(inputs=[typed([0.5] * 7)]),
            invalid,
        ),
        (
            "raw and typed",
            _infer_request(inputs=[typed([0.5])], raw_input_contents=[pixels.tobytes()]),
            invalid,
        ),
        ("long id", infer([1, 1, 28, 28], id="x" * 5000), invalid),
        (
            "bad binary_data_output",
            infer(
                [1, 1, 28, 28],
                parameters={"binary_data_output": service_pb2.InferParameter(string_param="yes")},
            ),
            invalid,
        ),
        (
            "unknown model",
            service_pb2.ModelInferRequest(model_name="../../etc/passwd"),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            "over the message limit",
            infer([1, 1, 28, 28], raw=(b"\0" * (2 << 20),)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
    ]


def test_hostile_inputs_never_crash_a_front_end(live: Live, fashion) -> None:
    errors_before = live.server.count_5xx()
    for what, request, expected in _hostile_requests(fashion):
        body = request if isinstance(request, bytes) else request.SerializeToString()
        assert _raw_call(live.target, "ModelInfer", body) == expected, what
    for method in (
        "ServerLive",
        "ModelReady",
        "ModelMetadata",
        "RepositoryIndex",
        "RepositoryModelLoad",
    ):
        assert (
            _raw_call(live.target, method, b"\x0a\xff\xff\xff\xff")
            == grpc.StatusCode.INVALID_ARGUMENT
        ), method
    assert _raw_call(live.target, "NoSuchMethod", b"") == grpc.StatusCode.UNIMPLEMENTED
    big_metadata = (*METADATA, ("x-padding", "p" * 100_000))
    assert _raw_call(live.target, "ServerLive", b"", big_metadata) != grpc.StatusCode.OK
    rng = random.Random(26)
    for _ in range(200):  # fuzz: random bytes either fail to parse or name no model
        body = rng.randbytes(rng.randrange(1, 64))
        code = _raw_call(live.target, "ModelInfer", body)
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (body, code)
    client = live.client()
    assert client.is_server_ready() and client.is_model_ready(MODEL, headers=AUTH)
    assert live.server.count_5xx() == errors_before
    assert live.server.metric("neutreno_requests_total", endpoint="grpc_infer", status="400") >= 20


def test_sigterm_drains_calls_in_flight(live: Live, fashion) -> None:
    """Last: stops the module's server. Calls in flight when SIGTERM arrives (batches wait up
    to 100 ms for batch-mates) all finish OK; the server exits 0."""
    x = _images(fashion, 1)
    started = threading.Barrier(9)
    results: list[object] = []

    def call() -> None:
        client = live.client()
        assert client.is_server_live()  # connected before the calls start together
        started.wait()
        try:
            results.append(client.infer(MODEL, [_input(x)], headers=AUTH).as_numpy("logits").shape)
        except InferenceServerException as exc:
            results.append(exc.status())

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    started.wait()
    time.sleep(0.03)
    live.server.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(30)
    assert results.count((1, 10)) >= 1, results
    assert set(results) <= {(1, 10), "StatusCode.RESOURCE_EXHAUSTED"}, results
    assert live.server.wait(60) == 0
