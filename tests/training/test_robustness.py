"""Framing cases through the service's decoding: a trained-free checkpoint gives valid scores."""

from pathlib import Path

import pytest
from support.export_helpers import facts_for

from models.checkpoint import save_checkpoint
from models.registry import build_model, get_config
from training import robustness

FASHION = str(Path(__file__).parents[1] / "fixtures" / "fashion-mnist")


@pytest.fixture(autouse=True)
def fixture_data(monkeypatch):
    monkeypatch.setenv("NEUTRENO_FASHION_MNIST_DIR", FASHION)


def test_classifier_cases_decode_at_their_sizes_and_score(tmp_path):
    cases = robustness.classifier_cases(limit=8)
    assert [len(c.pictures) for c in cases] == [8, 8, 8, 8]
    sizes = [
        robustness.decoded(c.pictures[0], {"image_size": [28, 28], "channels": 1})[1] for c in cases
    ]
    assert sizes == [(28, 28), (112, 112), (112, 112), (96, 96)]
    cfg = get_config("vit-fashion", depth=1)
    save_checkpoint(tmp_path, build_model(cfg), cfg, facts_for(cfg))
    results = robustness.evaluate(tmp_path, cases)
    assert set(results) == {c.name for c in cases}
    assert all(0.0 <= v <= 1.0 for r in results.values() for v in r.values())
    assert set(results["test items 28x28"]) == {"bilinear", "area"}


def test_segmenter_cases_score_at_picture_size(tmp_path):
    cases = robustness.segmenter_cases(limit=4)
    assert [len(c.pictures) for c in cases] == [4, 4, 4]
    cfg = get_config("segmenter-fashion", depth=1, decoder_depth=1)
    save_checkpoint(tmp_path, build_model(cfg), cfg, facts_for(cfg))
    results = robustness.evaluate(tmp_path, cases)
    assert set(results) == {c.name for c in cases}
    assert all(0.0 <= v <= 1.0 for r in results.values() for v in r.values())


def test_mask_classes_are_pixel_fractions_at_picture_size(tmp_path):
    from PIL import Image

    cfg = get_config("segmenter-fashion", depth=1, decoder_depth=1)
    save_checkpoint(tmp_path, build_model(cfg), cfg, facts_for(cfg))
    picture = tmp_path / "one.png"
    Image.new("L", (28, 28), 0).save(picture)
    classes = robustness.mask_classes(tmp_path, [picture])["one.png"]
    assert sum(classes.values()) == pytest.approx(1.0, abs=1e-3)
    assert set(classes) <= set(robustness.scenes.SCENE_LABELS)
