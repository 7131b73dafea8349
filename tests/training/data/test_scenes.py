"""Composite segmentation scenes (docs/ARCHITECTURE.md): determinism, 1..4 items, labels, no
overlap."""

from pathlib import Path

import numpy as np
import pytest

from training.data import fashion, scenes

ROOT = Path(__file__).parents[2] / "fixtures" / "fashion-mnist"


@pytest.fixture(scope="module")
def items():
    return fashion.load_split("test", ROOT)


def test_scenes_are_deterministic_per_seed_and_index(items):
    a = scenes.make_scenes(6, *items, seed=5)
    b = scenes.make_scenes(4, *items, seed=5)
    assert np.array_equal(a[0][:4], b[0]) and np.array_equal(a[1][:4], b[1])
    assert not np.array_equal(a[0], scenes.make_scenes(6, *items, seed=6)[0])


def test_masks_label_item_pixels_from_32_as_class_plus_one(items):
    images, masks = scenes.make_scenes(50, *items, seed=0)
    assert images.shape == masks.shape == (50, 64, 64) and masks.dtype == np.uint8
    assert set(np.unique(masks).tolist()) <= set(range(11))
    assert np.array_equal(masks > 0, images >= 32)  # items never overlap, background is 0


def test_one_to_four_non_overlapping_items():
    """Items of half 31 / half 32 pixels: each adds 392 labelled pixels unless boxes overlap."""
    item = np.where(np.arange(28) < 14, 31, 32).astype(np.uint8)[None, :].repeat(28, 0)
    labels = np.arange(10)
    images, masks = scenes.make_scenes(200, np.stack([item] * 10), labels, seed=1)
    counts = (masks > 0).reshape(200, -1).sum(1) / 392
    assert set(counts.tolist()) <= {1.0, 2.0, 3.0, 4.0} and len(set(counts.tolist())) > 2
    assert np.array_equal(masks > 0, images == 32)
    assert len(scenes.SCENE_LABELS) == 11 and scenes.SCENE_LABELS[0] == "background"
