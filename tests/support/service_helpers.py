"""Service test helpers: tiny model bundles, settings, image encoding and live servers.

The bundles are tiny hand-built ONNX graphs written with `export.bundle.write_bundle`, so they
satisfy the full bundle contract (one FidelityAttention node with its function body, manifest,
sha256) and load in milliseconds; the accuracy test also uses the shipped `fashion-classifier`
when model_repository/ has it.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from bench.live_server import LiveServer
from export.bundle import write_bundle
from export.opdef import DOMAIN, OP_TYPE, OPSET, attach_functions
from service import Settings
from training.data.fashion import LABELS, MEAN, STD

ROOT = Path(__file__).resolve().parents[2]
FASHION = LABELS  # the class names the tiny bundles carry, as the shipped ones do


def _attention_block(tokens: str, n: int, d: int, lam: float) -> list[onnx.NodeProto]:
    """tokens (B, n, d) -> one-head FidelityAttention -> `sim` (B, 1): its mean output."""
    return [
        helper.make_node("Reshape", [tokens, "qkv_shape"], ["qkv"]),
        helper.make_node(
            OP_TYPE, ["qkv", "qkv", "qkv", "qkv"], ["att", "", ""], domain=DOMAIN, lam=lam, causal=0
        ),
        helper.make_node("ReduceMean", ["att", "sim_axes"], ["sim_raw"], keepdims=0),
        helper.make_node("Tanh", ["sim_raw"], ["sim_tanh"]),
        helper.make_node("Reshape", ["sim_tanh", "sim_shape"], ["token_similarity"]),
    ]


def _attention_inits(n: int, d: int) -> list[onnx.TensorProto]:
    return [
        numpy_helper.from_array(np.array([0, 1, n, d], np.int64), "qkv_shape"),
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "sim_axes"),
        numpy_helper.from_array(np.array([0, 1], np.int64), "sim_shape"),
    ]


def _model(nodes: list, inits: list, inputs: list, outputs: list) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)]
    )
    return attach_functions(model)


def classifier_parts(seed: int, logits: str = "logits") -> tuple[list, list]:
    """Nodes and initialisers: pixel_values (B,1,28,28) -> 49 tokens of 16 pixels -> embed 8 ->
    attention -> `logits` (B, 10), plus token_similarity."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Reshape", ["pixel_values", "tok_shape"], ["pixels"]),
        helper.make_node("MatMul", ["pixels", "w_embed"], ["tokens"]),
        *_attention_block("tokens", 49, 8, 0.6),
        helper.make_node("Reshape", ["att", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w_head"], [logits]),
    ]
    inits = [
        numpy_helper.from_array(np.array([0, 49, 16], np.int64), "tok_shape"),
        numpy_helper.from_array(rng.normal(0, 0.5, (16, 8)).astype(np.float32), "w_embed"),
        numpy_helper.from_array(np.array([0, 49 * 8], np.int64), "flat_shape"),
        numpy_helper.from_array(rng.normal(0, 0.2, (49 * 8, 10)).astype(np.float32), "w_head"),
        *_attention_inits(49, 8),
    ]
    return nodes, inits


def classifier_model(nodes: list, inits: list) -> onnx.ModelProto:
    """A graph with the classifier contract: pixel_values (B, 1, 28, 28) in; logits (B, 10)
    and token_similarity (B, 1) out."""
    inputs = [
        helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 1, 28, 28])
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10]),
        helper.make_tensor_value_info("token_similarity", TensorProto.FLOAT, ["batch", 1]),
    ]
    return _model(nodes, inits, inputs, outputs)


def classifier_graph(seed: int = 0) -> onnx.ModelProto:
    """The tiny test classifier (see `classifier_parts`)."""
    return classifier_model(*classifier_parts(seed))


def segmenter_graph() -> onnx.ModelProto:
    """pixel_values (B,1,64,64) -> per-pixel logits over 11 classes banded by intensity."""
    c = np.arange(11, dtype=np.float32)
    nodes = [
        helper.make_node("Conv", ["pixel_values", "w", "b"], ["logits"]),
        helper.make_node("Reshape", ["pixel_values", "tok_shape"], ["tokens"]),
        *_attention_block("tokens", 256, 16, 0.6),
    ]
    inits = [
        numpy_helper.from_array(c.reshape(11, 1, 1, 1), "w"),
        numpy_helper.from_array(-0.1 * c * c, "b"),
        numpy_helper.from_array(np.array([0, 256, 16], np.int64), "tok_shape"),
        *_attention_inits(256, 16),
    ]
    inputs = [
        helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 1, 64, 64])
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 11, 64, 64]),
        helper.make_tensor_value_info("token_similarity", TensorProto.FLOAT, ["batch", 1]),
    ]
    return _model(nodes, inits, inputs, outputs)


def _manifest(name: str, task: str, size: int, labels: list[str]) -> dict:
    return {
        "name": name,
        "version": "1",
        "task": task,
        "attention": "neutreno",
        "lam": 0.6,
        "model": {"family": "test"},
        "labels": labels,
        "preprocessing": {
            "image_size": [size, size],
            "channels": 1,
            "mean": [MEAN],
            "std": [STD],
            "resize": "bilinear",
            "background": "black",
        },
        "training": {"data": "none (random test weights)", "metrics": {}},
    }


def write_test_repository(root: Path) -> Path:
    """fashion-classifier and fashion-segmenter tiny bundles under `root`."""
    write_bundle(
        root / "fashion-classifier" / "1",
        classifier_graph(),
        _manifest("fashion-classifier", "classification", 28, FASHION),
    )
    write_bundle(
        root / "fashion-segmenter" / "1",
        segmenter_graph(),
        _manifest("fashion-segmenter", "segmentation", 64, ["background", *FASHION]),
    )
    return root


def make_settings(repo: Path, **overrides: object) -> Settings:
    base = {
        "model_repository": repo,
        "max_queue_delay_ms": 2.0,
        "similarity_sample_every": 1,
        "intra_op_threads": 1,
        "grpc_port": 0,  # in-process apps serve HTTP only (tests/service/test_grpc.py: gRPC)
    }
    return Settings(**{**base, **overrides})


def png_bytes(array: np.ndarray, mode: str = "L", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


V2_DATATYPES = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}


def binary_infer(
    tensors: Iterable[tuple[str, np.ndarray]], outputs: Iterable[str] = (), as_binary: bool = True
) -> tuple[bytes, dict[str, str]]:
    """A Triton binary-tensor /v2 infer body and its headers; `outputs`, when given, are the
    outputs asked for, as binary data or (`as_binary` false) JSON."""
    tensors = list(tensors)
    request: dict[str, object] = {
        "inputs": [
            {
                "name": n,
                "shape": list(a.shape),
                "datatype": V2_DATATYPES[a.dtype],
                "parameters": {"binary_data_size": a.nbytes},
            }
            for n, a in tensors
        ]
    }
    if wanted := [{"name": n, "parameters": {"binary_data": as_binary}} for n in outputs]:
        request["outputs"] = wanted
    header = json.dumps(request).encode()
    return header + b"".join(a.tobytes() for _, a in tensors), {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


# What every live test server runs with unless a test says otherwise: one ORT thread and one
# front end, so that several servers fit the 2-core CI machine beside the tests driving them.
TEST_SERVER_SETTINGS = {"NEUTRENO_INTRA_OP_THREADS": "1", "NEUTRENO_WORKERS": "1"}


def start_server(
    repo: Path, settings: dict[str, str] | None = None, *, log: Path | None = None
) -> LiveServer:
    """`neutreno serve` on `repo` as the live tests run it: TEST_SERVER_SETTINGS, then
    `settings`; output to `log` or a temporary file (`LiveServer.output()` reads either)."""
    return LiveServer(repo, {**TEST_SERVER_SETTINGS, **(settings or {})}, log=log)


@contextmanager
def serving(repo: Path, settings: dict[str, str] | None = None) -> Iterator[LiveServer]:
    """`start_server`, waited on until ready; on leaving, the server must stop with status 0
    and no traceback in its output (what a module's shared live server is held to)."""
    live = start_server(repo, settings)
    try:
        live.wait_ready()
        yield live
    finally:
        assert live.stop() == 0
    assert "Traceback" not in live.output(), live.output()[-3000:]
