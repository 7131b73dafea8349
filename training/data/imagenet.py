"""ImageNet-1k in the folder layout root/{train,val}/<wnid>/*.JPEG, decoded with Pillow.

Class index = position of the wnid in the sorted list of class folders (as torchvision's
ImageFolder). Train images get DeiT's random resized crop + horizontal flip; evaluation images
are resized to size / 0.875 (256 for 224) and centre-cropped. Both are normalised with the
ImageNet mean/std. Augmentation is seeded by (seed, epoch, index), so an epoch's batches do not
depend on the number of loader workers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

MEAN_RGB, STD_RGB = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # ImageNet's, 0-1 scale
MEAN, STD = np.array(MEAN_RGB, np.float32), np.array(STD_RGB, np.float32)
EXTENSIONS = {".jpeg", ".jpg", ".png"}
CROP_FRACTION = 0.875  # eval: resize to size / 0.875, centre crop size
T_co = TypeVar("T_co", covariant=True)


class EpochDataset(Dataset[T_co]):
    """A map-style dataset of known length whose random augmentation depends on the epoch, as
    training.tasks.paper's loaders use it (ImageNet, ADE20K)."""

    epoch: int

    def set_epoch(self, epoch: int) -> None:
        """Choose the augmentation of an epoch (call before iterating a new DataLoader)."""
        self.epoch = epoch

    def __len__(self) -> int:
        raise NotImplementedError


def find_classes(folder: str | Path) -> list[str]:
    """Sorted class folder names (wnids) under `folder`."""
    classes = sorted(p.name for p in Path(folder).iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"{folder}: no class folders")
    return classes


def list_images(folder: str | Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(path, class index) of every image under folder/<wnid>/, sorted by class then name."""
    samples = []
    for index, wnid in enumerate(classes):
        files = sorted(p for p in (Path(folder) / wnid).iterdir() if p.suffix.lower() in EXTENSIONS)
        samples += [(p, index) for p in files]
    return samples


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file as 8-bit RGB (grey and CMYK JPEGs occur in ImageNet)."""
    with Image.open(path) as img:
        return img.convert("RGB")


def to_tensor(img: Image.Image) -> Tensor:
    """RGB image (H, W) -> float32 (3, H, W), scaled to [0, 1] then standardised per channel."""
    x = (np.asarray(img, np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """Random-resized-crop box (left, top, right, bottom), torchvision's sampling rule."""
    area, log_ratio = width * height, (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    w, h = width, height  # fallback: the largest centred box with an allowed aspect ratio
    if width / height < ratio[0]:
        h = round(width / ratio[0])
    elif width / height > ratio[1]:
        w = round(height * ratio[1])
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def train_transform(img: Image.Image, size: int, rng: np.random.Generator) -> Tensor:
    """Random resized crop to (size, size), bicubic, flip with p=0.5 -> (3, size, size)."""
    img = img.resize((size, size), Image.Resampling.BICUBIC, box=crop_box(*img.size, rng))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_tensor(img)


def eval_transform(img: Image.Image, size: int) -> Tensor:
    """Resize the short side to size / 0.875 (bicubic), centre crop -> (3, size, size)."""
    short = int(size / CROP_FRACTION)
    w, h = img.size
    scale = short / min(w, h)
    img = img.resize(
        (max(short, round(w * scale)), max(short, round(h * scale))), Image.Resampling.BICUBIC
    )
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return to_tensor(img.crop((left, top, left + size, top + size)))


class ImageNet(EpochDataset[tuple[Tensor, int]]):
    """One split of an ImageNet folder tree: item i -> (image (3, size, size) float32, label).

    `classes` defaults to the split's own sorted wnids; pass the train split's list to make
    sure a validation tree uses the same indices.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        size: int = 224,
        train: bool = False,
        seed: int = 0,
        classes: list[str] | None = None,
    ) -> None:
        folder = Path(root) / split
        self.classes = classes or find_classes(folder)
        self.samples = list_images(folder, self.classes)
        self.size, self.train, self.seed, self.epoch = size, train, seed, 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        img = load_rgb(path)
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            return train_transform(img, self.size, rng), label
        return eval_transform(img, self.size), label
