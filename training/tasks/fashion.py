"""The Fashion-MNIST tasks: garment classification (28x28) and segmentation of composite scenes
(64x64, background + 10 garment classes). Batches are normalised with Fashion-MNIST's statistics.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.checkpoint import DatasetFacts, Sample
from training.data import fashion, framing, scenes
from training.metrics import mean_iou
from training.tasks.base import Batch, Metrics, model_device, shard


def _augment_shift(x: Tensor, gen: torch.Generator, pad: int = 2) -> Tensor:
    """Random translation by up to `pad` pixels (zero fill in normalised space), (B, C, H, W)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), value=float(-fashion.MEAN / fashion.STD))
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    return padded[:, :, dy : dy + h, dx : dx + w]


def _reframed(x: Tensor, fraction: float, gen: torch.Generator) -> Tensor:
    """The first `fraction` of a normalised batch (B, 1, 28, 28) redrawn at another scale and
    position (training.data.framing.reframe); the batch is already in random order."""
    k = round(fraction * len(x))
    if k == 0:
        return x
    items = x[:k] * fashion.STD + fashion.MEAN
    moved = (framing.reframe(items, gen) - fashion.MEAN) / fashion.STD
    return torch.cat([moved, x[k:]])


@dataclass
class FashionMNISTTask:
    """Fashion-MNIST classification: 60k train, top-1 on the 10k test split."""

    root: str | None = None
    eval_limit: int | None = None
    seed: int = 0
    framing: float = 0.0  # fraction of each batch redrawn at another scale and position

    def __post_init__(self) -> None:
        images, labels = fashion.load_split("train", self.root)
        self.x_train = torch.from_numpy(fashion.normalize(images))
        self.y_train = torch.from_numpy(labels)
        test_images, test_labels = fashion.load_split("test", self.root)
        n = self.eval_limit or len(test_images)
        self.x_test = torch.from_numpy(fashion.normalize(test_images[:n]))
        self.y_test = torch.from_numpy(test_labels[:n])

    @property
    def facts(self) -> DatasetFacts:
        n = len(self.x_test)
        return DatasetFacts(
            "Fashion-MNIST train (60k), top-1 on test "
            + ("(10k)" if n == 10_000 else f"(first {n} images)"),
            labels=list(fashion.LABELS),
            mean=[fashion.MEAN],
            std=[fashion.STD],
        )

    def sample(self, n: int) -> Sample:
        return self.x_test[:n].clone(), f"{n} Fashion-MNIST test images"

    def steps_per_epoch(self, batch_size: int, world: int) -> int:
        return len(self.x_train) // (batch_size * world)

    def to(self, device: torch.device) -> None:
        """Keep the training set on the training device (no per-batch host copies)."""
        self.x_train, self.y_train = self.x_train.to(device), self.y_train.to(device)

    def batches(self, epoch: int, batch_size: int, rank: int, world: int) -> Iterator[Batch]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.x_train))
        gen = torch.Generator().manual_seed(self.seed * 1000 + epoch * world + rank)
        for idx in shard(order, batch_size, rank, world):
            rows = torch.from_numpy(idx).to(self.x_train.device)
            x = _reframed(self.x_train[rows], self.framing, gen)
            yield _augment_shift(x, gen), self.y_train[rows]

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y, label_smoothing=0.1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        correct = 0
        for i in range(0, len(self.x_test), 500):
            logits = model(self.x_test[i : i + 500].to(model_device(model))).cpu()
            correct += (logits.argmax(-1) == self.y_test[i : i + 500]).sum().item()
        return {"top1": correct / len(self.x_test), "test_images": len(self.x_test)}


@dataclass
class FashionScenesTask:
    """Composite Fashion-MNIST scenes: a fresh set of train scenes each epoch, mIoU on 500 fixed
    test scenes."""

    root: str | None = None
    scenes_per_epoch: int = 20000
    test_scenes: int = 500
    seed: int = 0
    framing: float = 0.0  # fraction of each batch replaced by scenes of 14-64 px items
    enlarged: float = 0.0  # fraction of each batch: standard scenes seen as a larger photo

    def __post_init__(self) -> None:
        self.items, self.item_labels = fashion.load_split("train", self.root)
        self.device = torch.device("cpu")
        self.items_01 = torch.from_numpy(self.items.astype(np.float32) / 255.0)[:, None]
        self.labels_t = torch.from_numpy(self.item_labels)
        test_items, test_labels = fashion.load_split("test", self.root)
        images, masks = scenes.make_scenes(self.test_scenes, test_items, test_labels, seed=10_000)
        self.x_test = torch.from_numpy(fashion.normalize(images))
        self.y_test = torch.from_numpy(masks.astype(np.int64))

    @property
    def facts(self) -> DatasetFacts:
        return DatasetFacts(
            "composite Fashion-MNIST scenes (64x64, 11 classes), mIoU on 500 test scenes",
            labels=list(scenes.SCENE_LABELS),
            mean=[fashion.MEAN],
            std=[fashion.STD],
        )

    def sample(self, n: int) -> Sample:
        return self.x_test[:n].clone(), f"{n} Fashion-MNIST test scenes"

    def steps_per_epoch(self, batch_size: int, world: int) -> int:
        return self.scenes_per_epoch // (batch_size * world)

    def batches(self, epoch: int, batch_size: int, rank: int, world: int) -> Iterator[Batch]:
        images, masks = scenes.make_scenes(
            self.scenes_per_epoch, self.items, self.item_labels, seed=self.seed * 1000 + epoch
        )
        x, y = torch.from_numpy(fashion.normalize(images)), torch.from_numpy(masks.astype(np.int64))
        gen = torch.Generator().manual_seed(self.seed * 1000 + epoch * world + rank)
        k = round(self.framing * batch_size)
        for idx in shard(np.arange(len(x)), batch_size, rank, world):
            xb, yb = x[idx].to(self.device), y[idx].to(self.device)
            if k:
                drawn, masks_k = framing.scaled_scenes(self.items_01, self.labels_t, k, gen)
                xb = torch.cat([(drawn - fashion.MEAN) / fashion.STD, xb[k:]])
                yb = torch.cat([masks_k, yb[k:]])
            yield self._enlarged(xb, k, gen), yb

    def _enlarged(self, x: Tensor, start: int, gen: torch.Generator) -> Tensor:
        """The `enlarged` share of a normalised batch (B, 1, 64, 64), from row `start` (after
        the framing scenes), replaced by framing.rephotographed copies; masks unchanged."""
        m = round(self.enlarged * len(x))
        if m == 0:
            return x
        part = x[start : start + m] * fashion.STD + fashion.MEAN
        redrawn = (framing.rephotographed(part, gen) - fashion.MEAN) / fashion.STD
        return torch.cat([x[:start], redrawn, x[start + m :]])

    def to(self, device: torch.device) -> None:
        """Draw the scaled scenes on the training device."""
        self.device = device
        self.items_01, self.labels_t = self.items_01.to(device), self.labels_t.to(device)

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> Metrics:
        preds = torch.cat(
            [
                model(self.x_test[i : i + 100].to(model_device(model))).argmax(1).cpu()
                for i in range(0, len(self.x_test), 100)
            ]
        )
        miou, per_class = mean_iou(preds, self.y_test, len(scenes.SCENE_LABELS))
        return {
            "miou": miou,
            "pixel_accuracy": (preds == self.y_test).float().mean().item(),
            "iou_per_class": per_class,
            "test_scenes": len(self.x_test),
        }
