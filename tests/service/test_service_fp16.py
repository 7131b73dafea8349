"""float16 bundles end to end: `neutreno export --fp16` of tiny classifier, segmenter and LM
checkpoints, served next to their float32 exports, agree with them on the test fixtures.

The service must feed a float16 graph float16 pixels (the manifest's input dtype); before this
test, every request to such a vision bundle was a 503 while its warm-up (zeros in the manifest
dtype) passed.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from support.export_helpers import facts_for
from support.generation_helpers import NAME, add_lm, tiny_lm
from support.service_helpers import b64, make_settings, png_bytes

from export.cli import export_checkpoint
from models import create_model, get_config
from models.checkpoint import save_checkpoint
from service import create_app
from training.data import scenes

TINY = {"depth": 2, "dim": 32, "heads": 2}
VARIANTS = {
    "classifier": ("vit-fashion", TINY),
    "segmenter": ("segmenter-fashion", {**TINY, "decoder_depth": 1, "decoder_heads": 2}),
}
SCENES = 40


def _checkpoint(folder: Path, variant: str, overrides: dict) -> Path:
    torch.manual_seed(0)
    cfg = get_config(variant, **overrides)
    save_checkpoint(
        folder,
        create_model(variant, **overrides),
        cfg,
        facts_for(cfg),
        metrics={"command": "neutreno train (test)"},
    )
    return folder


@pytest.fixture(scope="module")
def fp16_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One repository: <kind>-fp32 and <kind>-fp16 bundles of the same tiny checkpoint."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    tmp = tmp_path_factory.mktemp("fp16")
    for kind, (variant, overrides) in VARIANTS.items():
        ckpt = _checkpoint(tmp / "checkpoints" / kind, variant, overrides)
        for precision in ("fp32", "fp16"):
            export_checkpoint(
                ckpt, tmp / "repo" / f"{kind}-{precision}" / "1", fp16=precision == "fp16"
            )
    with TestClient(create_app(make_settings(tmp / "repo"))) as client:
        yield client


def _post(client: TestClient, name: str, task: str, image: np.ndarray) -> dict:
    r = client.post(
        f"/v1/models/{name}/{task}",
        json={"image": b64(png_bytes(image)), "top_k": 1}
        if task == "classify"
        else {"image": b64(png_bytes(image))},
    )
    assert r.status_code == 200, r.text
    return r.json()


def _mask(response: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(response["mask_png"]))))


@pytest.mark.slow
def test_fp16_bundles_take_float16_inputs(fp16_client: TestClient) -> None:
    models = fp16_client.app.state.service.models
    assert fp16_client.get("/readyz").status_code == 200
    for kind in VARIANTS:
        assert models[f"{kind}-fp16"].inputs[0].dtype == "float16"
        assert models[f"{kind}-fp32"].inputs[0].dtype == "float32"


@pytest.mark.slow
def test_fp16_classifier_top1_within_one_point_of_fp32(fp16_client: TestClient, fashion) -> None:
    images, labels = fashion
    top1 = {
        p: np.array(
            [
                _post(fp16_client, f"classifier-{p}", "classify", img)["predictions"][0]["index"]
                for img in images
            ]
        )
        for p in ("fp32", "fp16")
    }
    assert len(np.unique(top1["fp32"])) > 1  # a model that predicts one class tests nothing
    accuracy = {p: float((pred == labels).mean()) for p, pred in top1.items()}
    assert abs(accuracy["fp16"] - accuracy["fp32"]) <= 0.01, accuracy
    assert (top1["fp16"] == top1["fp32"]).mean() >= 0.98


@pytest.mark.slow
def test_fp16_segmenter_masks_within_one_percent_of_fp32(fp16_client: TestClient, fashion) -> None:
    images, labels = fashion
    scene_images, _ = scenes.make_scenes(SCENES, images, labels, seed=3)
    differing = total = 0
    for scene in scene_images:
        fp32, fp16 = (
            _mask(_post(fp16_client, f"segmenter-{p}", "segment", scene)) for p in ("fp32", "fp16")
        )
        assert fp16.shape == fp32.shape == scene.shape
        differing += int((fp16 != fp32).sum())
        total += fp32.size
    assert differing / total <= 0.01, differing / total


@pytest.fixture(scope="module")
def lm_client(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """The cached tiny LM bundle (float32) and its --fp16 export side by side."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    built = tiny_lm(request.config, tmp_path_factory.getbasetemp())
    repo = add_lm(tmp_path_factory.mktemp("lm16"), built)
    export_checkpoint(built / "checkpoint", repo / f"{NAME}-fp16" / "1", fp16=True)
    with TestClient(create_app(make_settings(repo))) as client:
        yield client


@pytest.mark.slow
def test_fp16_lm_scores_and_generates_like_fp32(lm_client: TestClient) -> None:
    prompt = "In the beginning God created the heaven and the earth."
    scored = {}
    for name in (NAME, f"{NAME}-fp16"):
        r = lm_client.post(
            "/v1/completions",
            json={"model": name, "prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 1},
        )
        assert r.status_code == 200, r.text
        scored[name] = r.json()["choices"][0]["logprobs"]["token_logprobs"]
        generated = lm_client.post(
            "/v1/completions",
            json={"model": name, "prompt": prompt, "max_tokens": 8, "temperature": 0},
        )
        assert generated.status_code == 200, generated.text
        assert generated.json()["usage"]["completion_tokens"] >= 1
    fp32, fp16 = (np.array(scored[n][1:], np.float64) for n in (NAME, f"{NAME}-fp16"))
    assert len(fp32) == len(fp16) > 8
    np.testing.assert_allclose(fp16, fp32, atol=0.05)
