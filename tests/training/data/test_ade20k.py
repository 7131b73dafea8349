"""ADE20K loader on the tiny fixture (4 training, 2 validation image/annotation pairs)."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.data import ade20k

ROOT = Path(__file__).parents[2] / "fixtures" / "paper" / "ADEChallengeData2016"


def test_pairs_match_by_name():
    pairs = ade20k.list_pairs(ROOT, "train")
    assert len(pairs) == 4 and len(ade20k.list_pairs(ROOT, "validation")) == 2
    assert all(img.stem == ann.stem and ann.exists() for img, ann in pairs)


def test_labels_drop_zero_and_shift_classes(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.array([[0, 1, 2, 150, 151]], np.uint8)).save(path)
    assert ade20k.load_label(path).tolist() == [[255, 0, 1, 149, 255]]


def test_train_items_are_padded_crops_with_ignore_label():
    ds = ade20k.ADE20K(ROOT, "train", crop=96, train=True, seed=0)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 96, 96) and x.dtype == torch.float32
        assert y.shape == (96, 96) and y.dtype == torch.int64
        assert set(y.unique().tolist()) <= set(range(150)) | {255}
    assert (y == 255).any()  # fixture images are < 96 px after most rescales: padding is ignored
    again = ade20k.ADE20K(ROOT, "train", crop=96, train=True, seed=0)[len(ds) - 1]
    assert torch.equal(again[0], x) and torch.equal(again[1], y)


def test_validation_items_keep_the_original_label_size():
    ds = ade20k.ADE20K(ROOT, "validation", crop=32)
    x, y = ds[0]
    with Image.open(ds.pairs[0][1]) as ann:
        assert y.shape == (ann.height, ann.width)
    assert min(x.shape[1:]) == 32 and x.shape[0] == 3
    assert set(y.unique().tolist()) >= {0, 149, 255}
