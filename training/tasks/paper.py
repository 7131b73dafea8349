"""Paper-scale image tasks: DeiT on ImageNet-1k and Segmenter on ADE20K.

Images are decoded by torch DataLoader workers (NEUTRENO_DATA_WORKERS, default min(8, CPUs));
each rank loads its `shard` of one seeded permutation per epoch, so ranks see disjoint
equal-sized shares. Evaluation runs on the model's device.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from models.checkpoint import DatasetFacts, Sample
from models.config import ModelConfig, SegmenterConfig, ViTConfig
from training.data import ade20k, imagenet
from training.data.imagenet import EpochDataset
from training.metrics import confusion, iou_from_confusion
from training.tasks.base import (
    Batch,
    Metrics,
    model_device,
    require_config,
    require_data_dir,
    shard,
)

T = TypeVar("T")
D = TypeVar("D", bound=EpochDataset[object])


def default_workers() -> int:
    """DataLoader workers per process: NEUTRENO_DATA_WORKERS, else min(8, CPU count)."""
    return int(os.environ.get("NEUTRENO_DATA_WORKERS", min(8, os.cpu_count() or 1)))


def train_loader(
    dataset: EpochDataset[T],
    epoch: int,
    batch_size: int,
    rank: int,
    world: int,
    seed: int,
    workers: int,
) -> DataLoader[T]:
    """This rank's batches of one epoch: `shard` of a permutation seeded by (seed, epoch)."""
    dataset.set_epoch(epoch)
    order = np.random.default_rng([seed, epoch]).permutation(len(dataset))
    shards = [idx.tolist() for idx in shard(order, batch_size, rank, world)]
    return DataLoader(
        dataset, batch_sampler=shards, num_workers=workers, pin_memory=torch.cuda.is_available()
    )


def spread(n: int, limit: int | None) -> list[int]:
    """`limit` indices evenly spread over range(n) (all of them when limit is None or >= n)."""
    if not limit or limit >= n:
        return list(range(n))
    return np.linspace(0, n - 1, limit).round().astype(int).tolist()


class LoaderEpochs(Generic[D]):
    """Epochs of a map-style `train_set` through `train_loader`, for the dataset-backed tasks.

    Subclasses provide train_set, seed and num_workers.
    """

    train_set: D
    seed: int
    num_workers: int

    def steps_per_epoch(self, batch_size: int, world: int) -> int:
        return len(self.train_set) // (batch_size * world)

    def batches(self, epoch: int, batch_size: int, rank: int, world: int) -> Iterator[Batch]:
        """This rank's (inputs, targets) batches of one epoch, as the train set yields them."""
        yield from train_loader(
            self.train_set, epoch, batch_size, rank, world, self.seed, self.num_workers
        )

    def to(self, device: torch.device) -> None:
        """Nothing to move: the loader streams from disk and the training loop moves batches."""


@dataclass
class ImageNetTask(LoaderEpochs[imagenet.ImageNet]):
    """ImageNet-1k folder tree: DeiT augmentation, label smoothing 0.1; top-1/top-5 on val.

    Batches: images (B, 3, S, S) float32, labels (B,) int64.
    """

    root: str
    img_size: int = 224
    eval_limit: int | None = None
    seed: int = 0
    num_workers: int = field(default_factory=default_workers)
    eval_batch_size: int = 250

    def __post_init__(self) -> None:
        self.train_set = imagenet.ImageNet(
            self.root, "train", self.img_size, train=True, seed=self.seed
        )
        val = imagenet.ImageNet(self.root, "val", self.img_size, classes=self.train_set.classes)
        self.val_set = Subset(val, spread(len(val), self.eval_limit))

    @property
    def facts(self) -> DatasetFacts:
        return DatasetFacts(
            "ImageNet-1k train, top-1 on val",
            labels=list(self.train_set.classes),
            mean=imagenet.MEAN_RGB,
            std=imagenet.STD_RGB,
        )

    def sample(self, n: int) -> Sample:
        """The first n evaluation images (B, 3, S, S), centre-cropped and normalised."""
        n = min(n, len(self.val_set))
        return torch.stack([self.val_set[i][0] for i in range(n)]), f"{n} ImageNet val images"

    @classmethod
    def from_config(
        cls, cfg: ModelConfig, data_dir: str | None, seed: int, **kwargs: Any
    ) -> ImageNetTask:
        cfg = require_config(cls, cfg, ViTConfig)
        root = require_data_dir(data_dir, cfg, "an ImageNet folder with train/ and val/")
        return cls(root, img_size=cfg.img_size, seed=seed, **kwargs)

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y, label_smoothing=0.1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        device, top1, top5 = model_device(model), 0, 0
        loader = DataLoader(self.val_set, self.eval_batch_size, num_workers=self.num_workers)
        for x, y in loader:
            logits = model(x.to(device))
            ranked = logits.topk(min(5, logits.shape[-1]), dim=-1).indices.cpu()
            top1 += (ranked[:, 0] == y).sum().item()
            top5 += (ranked == y[:, None]).any(-1).sum().item()
        n = len(self.val_set)
        return {"top1": top1 / n, "top5": top5 / n, "val_images": n}


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Window offsets covering [0, size) with windows of `crop` (mmseg's slide rule)."""
    grids = max(size - crop + stride - 1, 0) // stride + 1
    return [max(min(i * stride, size - crop), 0) for i in range(grids)]


def slide_logits(model: nn.Module, x: Tensor, crop: int, stride: int) -> Tensor:
    """Sliding-window inference: image (1, 3, h, w) -> logits (1, C, h, w), windows averaged.

    Images smaller than the window are zero-padded (bottom/right) and the padding cropped off.
    """
    h, w = x.shape[-2:]
    x = F.pad(x, (0, max(crop - w, 0), 0, max(crop - h, 0)))
    boxes = [
        (t, s)
        for t in window_starts(x.shape[-2], crop, stride)
        for s in window_starts(x.shape[-1], crop, stride)
    ]
    out = model(torch.cat([x[..., t : t + crop, s : s + crop] for t, s in boxes]))
    logits = out.new_zeros(1, out.shape[1], *x.shape[-2:])
    count = out.new_zeros(1, 1, *x.shape[-2:])
    for (t, s), window in zip(boxes, out, strict=False):
        logits[0, :, t : t + crop, s : s + crop] += window
        count[0, :, t : t + crop, s : s + crop] += 1
    return (logits / count)[..., :h, :w]


@dataclass
class ADE20KTask(LoaderEpochs[ade20k.ADE20K]):
    """ADE20K (150 classes, 255 ignored): mmseg augmentation; mIoU by sliding-window inference
    at the original label resolution, accumulated over the whole validation set.

    Batches: images (B, 3, crop, crop) float32, labels (B, crop, crop) int64, 255 = ignore.
    """

    root: str
    crop: int = 512
    eval_stride: int | None = None
    seed: int = 0
    num_workers: int = field(default_factory=default_workers)

    def __post_init__(self) -> None:
        self.train_set = ade20k.ADE20K(self.root, "train", self.crop, train=True, seed=self.seed)
        self.val_set = ade20k.ADE20K(self.root, "validation", self.crop)

    @property
    def facts(self) -> DatasetFacts:
        return DatasetFacts(
            "ADE20K train, mIoU on validation",
            labels=ade20k.class_names(self.root),
            mean=imagenet.MEAN_RGB,
            std=imagenet.STD_RGB,
        )

    def sample(self, n: int) -> None:
        """None: validation images keep their own sizes, not the model's crop."""

    @classmethod
    def from_config(
        cls, cfg: ModelConfig, data_dir: str | None, seed: int, **kwargs: Any
    ) -> ADE20KTask:
        cfg = require_config(cls, cfg, SegmenterConfig)
        if cfg.num_classes != ade20k.NUM_CLASSES:
            raise ValueError(f"ADE20K has {ade20k.NUM_CLASSES} classes, not {cfg.num_classes}")
        root = require_data_dir(data_dir, cfg, "ADEChallengeData2016")
        return cls(root, crop=cfg.img_size, seed=seed, **kwargs)

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """Mean cross-entropy over labelled pixels (0, not nan, for an all-ignore batch)."""
        x, y = batch
        total = F.cross_entropy(model(x), y, ignore_index=ade20k.IGNORE, reduction="sum")
        return total / (y != ade20k.IGNORE).sum().clamp(min=1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> Metrics:
        device, n = model_device(model), ade20k.NUM_CLASSES
        conf = torch.zeros(n, n, dtype=torch.int64)
        loader = DataLoader(self.val_set, batch_size=1, num_workers=self.num_workers)
        for x, y in loader:
            logits = slide_logits(model, x.to(device), self.crop, self.eval_stride or self.crop)
            logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
            conf += confusion(logits.argmax(1).cpu(), y, n, ade20k.IGNORE)
        miou, per_class = iou_from_confusion(conf)
        accuracy = conf.diag().sum().item() / max(conf.sum().item(), 1)
        return {
            "miou": miou,
            "pixel_accuracy": accuracy,
            "iou_per_class": per_class,
            "val_images": len(self.val_set),
        }
