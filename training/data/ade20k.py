"""ADE20K (SceneParsing release ADEChallengeData2016), as mmsegmentation prepares it.

Layout: root/images/{training,validation}/ADE_*.jpg and root/annotations/{same}/ADE_*.png, where
an annotation pixel is 0 ("other", ignored) or a class 1..150. Labels become 0..149 with 255 =
ignore (mmseg's reduce_zero_label). Train pipeline (mmseg ade20k 512x512): random rescale of the
(4 * crop, crop) scale by a ratio in [0.5, 2], random crop whose largest class covers < 75% of it,
horizontal flip, ImageNet normalisation, pad to the crop (image 0, label 255). Validation images
are rescaled to fit (4 * crop, crop) keeping the aspect ratio; their labels keep the original size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

from training.data.imagenet import EpochDataset, load_rgb, to_tensor

NUM_CLASSES, IGNORE = 150, 255
SPLITS = {"train": "training", "validation": "validation"}
CAT_MAX_RATIO = 0.75
CLASS_NAMES = "objectInfo150.txt"  # the release's class table: Idx, Ratio, Train, Val, Name


def class_names(root: str | Path) -> list[str]:
    """The 150 class names in label order (first name of each row of objectInfo150.txt), or
    class_<i> when the release's table is not in root."""
    table = Path(root) / CLASS_NAMES
    if not table.is_file():
        return [f"class_{i}" for i in range(NUM_CLASSES)]
    rows = [line.split("\t") for line in table.read_text().splitlines()[1:] if line.strip()]
    return [row[-1].split(";")[0].strip() for row in rows]


def list_pairs(root: str | Path, split: str) -> list[tuple[Path, Path]]:
    """(image, annotation) paths of 'train' or 'validation', sorted by name."""
    folder = SPLITS[split]
    images = sorted((Path(root) / "images" / folder).glob("*.jpg"))
    if not images:
        raise FileNotFoundError(f"{root}/images/{folder}: no .jpg images")
    return [(p, Path(root) / "annotations" / folder / f"{p.stem}.png") for p in images]


def load_label(path: str | Path) -> np.ndarray:
    """Annotation PNG -> (H, W) uint8 in 0..149 with 255 = ignore (0 and > 150 are ignored)."""
    with Image.open(path) as img:
        raw = np.asarray(img, np.int16)
    out = raw - 1
    out[(out < 0) | (out >= NUM_CLASSES)] = IGNORE
    return out.astype(np.uint8)


def rescale_size(width: int, height: int, long_max: float, short_max: float) -> tuple[int, int]:
    """Keep-ratio size whose long side <= long_max and short side <= short_max (mmseg rule)."""
    scale = min(long_max / max(width, height), short_max / min(width, height))
    return int(width * scale + 0.5), int(height * scale + 0.5)


def random_crop(label: np.ndarray, crop: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left of a crop (up to 10 tries) where no single class covers >= 75% of valid pixels."""
    h, w = label.shape
    top = left = 0  # replaced by the first of the tries
    for _ in range(10):
        top = int(rng.integers(0, max(h - crop, 0) + 1))
        left = int(rng.integers(0, max(w - crop, 0) + 1))
        values, counts = np.unique(label[top : top + crop, left : left + crop], return_counts=True)
        counts = counts[values != IGNORE]
        if len(counts) > 1 and counts.max() / counts.sum() < CAT_MAX_RATIO:
            break
    return top, left


def train_transform(
    img: Image.Image, label: np.ndarray, crop: int, rng: np.random.Generator
) -> tuple[Tensor, Tensor]:
    """-> image (3, crop, crop) float32 and label (crop, crop) int64 with 255 = ignore."""
    ratio = rng.uniform(0.5, 2.0)
    size = rescale_size(*img.size, 4 * crop * ratio, crop * ratio)
    img = img.resize(size, Image.Resampling.BILINEAR)
    label = np.asarray(Image.fromarray(label).resize(size, Image.Resampling.NEAREST))
    top, left = random_crop(label, crop, rng)
    img = img.crop((left, top, left + min(crop, size[0]), top + min(crop, size[1])))
    label = label[top : top + crop, left : left + crop]
    if rng.random() < 0.5:
        img, label = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), label[:, ::-1]
    x, y = to_tensor(img), torch.from_numpy(label.astype(np.int64))
    pad = (0, crop - x.shape[2], 0, crop - x.shape[1])
    return F.pad(x, pad, value=0.0), F.pad(y, pad, value=IGNORE)


def eval_transform(img: Image.Image, crop: int) -> Tensor:
    """Keep-ratio rescale to fit (4 * crop, crop) -> (3, h, w) float32."""
    return to_tensor(img.resize(rescale_size(*img.size, 4 * crop, crop), Image.Resampling.BILINEAR))


class ADE20K(EpochDataset[tuple[Tensor, Tensor]]):
    """One split: train item -> (image (3, crop, crop), label (crop, crop) int64);
    validation item -> (rescaled image (3, h, w), original-size label (H, W) int64)."""

    def __init__(
        self, root: str | Path, split: str, crop: int = 512, train: bool = False, seed: int = 0
    ) -> None:
        self.pairs = list_pairs(root, split)
        self.crop, self.train, self.seed, self.epoch = crop, train, seed, 0

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image_path, label_path = self.pairs[index]
        img, label = load_rgb(image_path), load_label(label_path)
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            return train_transform(img, label, self.crop, rng)
        return eval_transform(img, self.crop), torch.from_numpy(label.astype(np.int64))
