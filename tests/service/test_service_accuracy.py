"""Classifier accuracy through REST equals running the bundle directly (shipped bundle if any)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from support.service_helpers import ROOT, b64, make_settings, png_bytes

from service import create_app

SHIPPED = ROOT / "model_repository"


def _repository(test_repository: Path) -> Path:
    """The shipped repository when it has the classifier, else the test bundles."""
    if any((SHIPPED / "fashion-classifier").glob("*/manifest.json")):
        return SHIPPED
    return test_repository


def _direct_predictions(bundle: Path, images: np.ndarray, pre: dict) -> np.ndarray:
    mean, std = pre["mean"][0], pre["std"][0]
    x = ((images.astype(np.float32) / 255.0 - mean) / std)[:, None]
    sess = ort.InferenceSession(str(bundle / "model.onnx"))
    return sess.run(["logits"], {"pixel_values": x})[0].argmax(axis=1)


@pytest.mark.slow
def test_rest_accuracy_equals_direct_bundle_accuracy(repository: Path, fashion) -> None:
    images, labels = fashion
    repo = _repository(repository)
    with TestClient(create_app(make_settings(repo, max_batch_size=32))) as c:
        model = c.app.state.service.engine.core.models["fashion-classifier"]
        direct = _direct_predictions(model.path, images, model.preprocessing)
        served = np.array(
            [
                c.post(
                    "/v1/models/fashion-classifier/classify",
                    json={"image": b64(png_bytes(img)), "top_k": 1},
                ).json()["predictions"][0]["index"]
                for img in images
            ]
        )
    assert (served == direct).all()
    rest_accuracy, direct_accuracy = (served == labels).mean(), (direct == labels).mean()
    assert rest_accuracy == direct_accuracy
    if repo == SHIPPED:
        assert rest_accuracy > 0.8, rest_accuracy
