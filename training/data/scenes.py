"""Composite segmentation scenes built from Fashion-MNIST items, deterministic from a seed.

A 64x64 black canvas holds 1 to 4 items of 28x28 pasted at random integer offsets without
overlapping boxes. Pixel label = item class + 1 where the item's pixel >= 32, else 0 (background);
11 classes. Train scenes use train items, test scenes use test items.
"""

from __future__ import annotations

import numpy as np

from training.data.fashion import LABELS

CANVAS, ITEM, THRESHOLD, MAX_ITEMS = 64, 28, 32, 4
SCENE_LABELS = ["background", *LABELS]


def _boxes_overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return abs(a[0] - b[0]) < ITEM and abs(a[1] - b[1]) < ITEM


def make_scene(
    rng: np.random.Generator, images: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: image (64, 64) uint8 and label mask (64, 64) uint8 in [0, 10]."""
    canvas = np.zeros((CANVAS, CANVAS), np.uint8)
    mask = np.zeros((CANVAS, CANVAS), np.uint8)
    wanted = int(rng.integers(1, MAX_ITEMS + 1))
    boxes: list[tuple[int, int]] = []
    for _ in range(50):  # rejection sampling of non-overlapping boxes
        if len(boxes) == wanted:
            break
        box = (int(rng.integers(0, CANVAS - ITEM + 1)), int(rng.integers(0, CANVAS - ITEM + 1)))
        if any(_boxes_overlap(box, b) for b in boxes):
            continue
        boxes.append(box)
        k = int(rng.integers(len(images)))
        y, x = box
        canvas[y : y + ITEM, x : x + ITEM] = images[k]
        mask[y : y + ITEM, x : x + ITEM] = np.where(images[k] >= THRESHOLD, labels[k] + 1, 0)
    return canvas, mask


def make_scenes(
    n: int, images: np.ndarray, labels: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """n scenes, (n, 64, 64) uint8 images and masks; scene i depends only on (seed, i)."""
    out = [make_scene(np.random.default_rng([seed, i]), images, labels) for i in range(n)]
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])
