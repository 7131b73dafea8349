"""The bundle's `resize` method: area reduction keeps a large photo of a small item faithful."""

import numpy as np
from PIL import Image

from service.frontend import imaging

PRE = {"image_size": [28, 28], "channels": 1, "mean": [0.0], "std": [1.0]}


def _stripes() -> np.ndarray:
    """28x28 uint8 with one-pixel vertical stripes: the detail bilinear shrinking aliases."""
    img = np.zeros((28, 28), np.uint8)
    img[:, ::2] = 255
    return img


def test_area_reduction_recovers_a_4x_upscaled_picture():
    small = _stripes()
    big = Image.fromarray(small).resize((112, 112), Image.Resampling.NEAREST)
    area = imaging.preprocess(big, {**PRE, "resize": "area"})[0, 0] * 255
    bilinear = imaging.preprocess(big, {**PRE, "resize": "bilinear"})[0, 0] * 255
    assert np.abs(area - small).max() < 1.0
    assert np.abs(bilinear - small).mean() > 20.0


def test_area_enlarges_bilinearly_and_keeps_same_size_pictures():
    img = Image.fromarray(_stripes())
    assert imaging.resize(img, (28, 28), "area") is img
    up = imaging.resize(img, (56, 56), "area")
    assert np.array_equal(
        np.asarray(up), np.asarray(img.resize((56, 56), Image.Resampling.BILINEAR))
    )
