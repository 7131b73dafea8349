"""Framing augmentation and held-out cases: sizes, positions and masks as documented."""

import numpy as np
import torch

from training.data import framing
from training.data.scenes import THRESHOLD


def _square(n: int = 4) -> torch.Tensor:
    """n white 28x28 squares (the whole item is foreground), (n, 1, 28, 28) in [0, 1]."""
    return torch.ones(n, 1, 28, 28)


def test_reframe_shrinks_and_moves_items_inside_the_frame():
    gen = torch.Generator().manual_seed(0)
    out = framing.reframe(_square(64), gen, min_scale=0.4)
    assert out.shape == (64, 1, 28, 28) and 0.0 <= out.min() and out.max() <= 1.0 + 1e-6
    area = out.sum(dim=(1, 2, 3)) / (28 * 28)  # fraction of the frame the item covers
    assert (area >= 0.4**2 - 0.02).all() and (area <= 1.0 + 1e-4).all()
    assert area.min() < 0.3  # some really shrank


def test_scaled_scenes_label_what_is_drawn():
    gen = torch.Generator().manual_seed(1)
    items = torch.rand(10, 1, 28, 28)
    labels = torch.arange(10)
    images, masks = framing.scaled_scenes(items, labels, 32, gen)
    assert images.shape == (32, 1, 64, 64) and masks.shape == (32, 64, 64)
    assert masks.max() <= 10 and (masks > 0).any(dim=(1, 2)).all()
    assert (images[:, 0][masks > 0] >= THRESHOLD / 255).all()
    assert (masks[images[:, 0] == 0] == 0).all()


def test_placed_item_is_40_to_90_px_and_masked():
    rng = np.random.default_rng(0)
    item = np.full((28, 28), 200, np.uint8)
    for _ in range(20):
        photo, mask = framing.placed_item(item, 3, rng)
        side = int(np.sqrt((mask == 4).sum()))
        assert photo.size == (96, 96) and 40 <= side <= 90
        assert set(np.unique(mask)) == {0, 4}


def test_rephotographed_keeps_geometry_and_blurs_edges():
    gen = torch.Generator().manual_seed(2)
    images = torch.zeros(12, 1, 64, 64)
    images[:, :, 16:48, 16:48] = 1.0
    out = framing.rephotographed(images, gen)
    assert out.shape == images.shape and torch.allclose(
        out.sum((1, 2, 3)), images.sum((1, 2, 3)), rtol=1e-4
    )
    assert (out[:, :, 20:44, 20:44] == 1.0).all() and (out[:, :, :12] == 0).all()
    edge = out[:, 0, 32, 15:17]  # across the left border: no longer a hard 0 -> 1 step
    assert ((edge > 0) & (edge < 1)).any()
