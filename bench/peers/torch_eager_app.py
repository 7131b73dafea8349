"""The peer baseline: a straightforward FastAPI + PyTorch eager service of the same checkpoint.

What a team would write first: a sync endpoint (FastAPI runs it in its thread pool), PIL
decoding, the bundle's own preprocessing (same mean/std/size as the ONNX service), one
`model(x)` per request under `torch.inference_mode()`, softmax top-k. No batching, no ONNX.
Same route and JSON as NeuTRENO Serve, so the same wrk script drives both.

    PEER_CHECKPOINT=checkpoints/vit-fashion-neutreno \
    PEER_BUNDLE=model_repository/fashion-classifier/1 \
        python -m uvicorn bench.peers.torch_eager_app:app --port 8001
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, HTTPException
from PIL import Image
from pydantic import BaseModel, Field

from models.checkpoint import load_checkpoint

CHECKPOINT = Path(os.environ.get("PEER_CHECKPOINT", "checkpoints/vit-fashion-neutreno"))
BUNDLE = Path(os.environ.get("PEER_BUNDLE", "model_repository/fashion-classifier/1"))

if os.environ.get("PEER_TORCH_THREADS"):
    torch.set_num_threads(int(os.environ["PEER_TORCH_THREADS"]))
model, cfg = load_checkpoint(CHECKPOINT)
manifest = json.loads((BUNDLE / "manifest.json").read_text())
pre = manifest["preprocessing"]
labels: list[str] = manifest["labels"]
height, width = pre["image_size"]
mean = np.float32(pre["mean"][0])
std = np.float32(pre["std"][0])

app = FastAPI(title="PyTorch eager peer")


class ClassifyRequest(BaseModel):
    image: str
    top_k: int = Field(5, ge=1, le=1000)


@app.get("/readyz")
def readyz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/models/{name}/classify")
def classify(name: str, req: ClassifyRequest) -> dict[str, Any]:
    try:
        img = Image.open(io.BytesIO(base64.b64decode(req.image))).convert("L")
    except Exception as exc:
        raise HTTPException(400, f"bad image: {exc}") from None
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    x = (np.asarray(img, np.float32) / 255.0 - mean) / std
    with torch.inference_mode():
        logits = model(torch.from_numpy(x)[None, None])
    probs = torch.softmax(logits[0].double(), dim=-1)
    top = torch.topk(probs, min(req.top_k, probs.numel()))
    return {
        "model": name,
        "predictions": [
            {"index": int(i), "label": labels[int(i)], "score": float(p)}
            for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        ],
    }
