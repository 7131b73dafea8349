"""The Ray Serve peer: `@serve.batch` over the same ONNX model, in ONNX Runtime, same HTTP API.

Runs in its own virtual environment (bench/.venv-ray: ray[serve], onnxruntime, pillow, numpy),
because Ray Serve pins its own FastAPI/Starlette. One replica (the machine has 2 cores), ORT
session options as in NeuTRENO Serve (all graph optimisations, default intra-op threads, one
inter-op thread, no spinning), and the same batching limits (max batch size, batch wait).

    bench/.venv-ray/bin/python bench/peers/ray_serve_app.py \
        --bundle model_repository/fashion-classifier/1 --port 8002 --max-batch-size 32
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import signal
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse


def build(bundle: str, max_batch_size: int, batch_wait_s: float, threads: int):
    @serve.deployment(num_replicas=1, max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0})
    class Classifier:
        def __init__(self) -> None:
            root = Path(bundle)
            manifest = json.loads((root / "manifest.json").read_text())
            pre = manifest["preprocessing"]
            self.labels = manifest["labels"]
            self.height, self.width = pre["image_size"]
            self.mean = np.float32(pre["mean"][0])
            self.std = np.float32(pre["std"][0])
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(
                str(root / "model.onnx"), opts, providers=["CPUExecutionProvider"]
            )
            self.input = self.session.get_inputs()[0].name
            self.session.run(
                ["logits"], {self.input: np.zeros((1, 1, self.height, self.width), np.float32)}
            )

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_s)
        async def infer(self, images: list[np.ndarray]) -> list[np.ndarray]:
            logits = self.session.run(["logits"], {self.input: np.concatenate(images)})[0]
            return list(logits)

        async def __call__(self, request: Request) -> JSONResponse:
            body = await request.json()
            try:
                img = Image.open(io.BytesIO(base64.b64decode(body["image"]))).convert("L")
            except Exception as exc:
                return JSONResponse({"error": f"bad image: {exc}"}, status_code=400)
            if img.size != (self.width, self.height):
                img = img.resize((self.width, self.height), Image.Resampling.BILINEAR)
            x = (np.asarray(img, np.float32) / 255.0 - self.mean) / self.std
            logits = (await self.infer(x[None, None])).astype(np.float64)
            z = np.exp(logits - logits.max())
            probs = z / z.sum()
            order = np.argsort(-probs, kind="stable")[: int(body.get("top_k", 5))]
            return JSONResponse(
                {
                    "model": "fashion-classifier",
                    "predictions": [
                        {"index": int(i), "label": self.labels[int(i)], "score": float(probs[i])}
                        for i in order
                    ],
                }
            )

    return Classifier.bind()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--bundle", required=True)
    p.add_argument("--port", type=int, default=8002)
    p.add_argument("--route", default="/v1/models/fashion-classifier/classify")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-ms", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(
        build(args.bundle, args.max_batch_size, args.batch_wait_ms / 1000.0, args.threads),
        route_prefix=args.route,
        blocking=False,
    )
    print("READY", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    while not stop:
        time.sleep(0.2)
    serve.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
