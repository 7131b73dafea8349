"""ImageNet folder-layout loader on the tiny fixture tree (3 classes, 12 train / 6 val JPEGs)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import imagenet

ROOT = Path(__file__).parents[2] / "fixtures" / "paper" / "imagenet"
WNIDS = ["n01440764", "n01443537", "n01484850"]


def test_classes_are_sorted_wnids_and_labels_follow_folders():
    train = imagenet.ImageNet(ROOT, "train", size=32, train=True)
    assert train.classes == WNIDS and len(train) == 12
    for path, label in train.samples:
        assert path.parent.name == WNIDS[label]
    val = imagenet.ImageNet(ROOT, "val", size=32, classes=train.classes)
    assert [label for _, label in val.samples] == [0, 0, 1, 1, 2, 2]


def test_train_items_are_normalised_crops_seeded_by_epoch():
    ds = imagenet.ImageNet(ROOT, "train", size=32, train=True, seed=1)
    x, label = ds[0]  # a greyscale JPEG, decoded as RGB
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and label == 0
    assert -2.2 < x.min() and x.max() < 2.7  # within ImageNet-normalised [0, 1]
    assert torch.equal(ds[5][0], ds[5][0])
    ds.set_epoch(1)
    assert not torch.equal(ds[5][0], imagenet.ImageNet(ROOT, "train", 32, True, seed=1)[5][0])


def test_eval_transform_resizes_short_side_then_centre_crops():
    img = Image.fromarray(np.full((50, 100, 3), 128, np.uint8))
    x = imagenet.eval_transform(img, 224)
    assert x.shape == (3, 224, 224)
    expected = (128 / 255 - imagenet.MEAN) / imagenet.STD
    assert np.allclose(x.mean((1, 2)).numpy(), expected, atol=1e-3)


@pytest.mark.parametrize("size", [(64, 48), (300, 20), (20, 300)])
def test_crop_boxes_stay_inside_the_image(size):
    rng = np.random.default_rng(0)
    for _ in range(50):
        left, top, right, bottom = imagenet.crop_box(*size, rng)
        assert 0 <= left < right <= size[0] and 0 <= top < bottom <= size[1]
