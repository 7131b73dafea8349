"""The three training tasks: what data a model sees, its loss and its evaluation metrics.

Each task yields this rank's share of every epoch's batches (rank::world of one shuffled order,
so every rank sees the same number of batches), computes the loss of a batch and evaluates a
model on the held-out split.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.data import fashion, framing, kjv, scenes

Batch = tuple[Tensor, Tensor]


class Task(Protocol):
    def batches(self, epoch: int, batch_size: int, rank: int, world: int) -> Iterator[Batch]: ...
    def steps_per_epoch(self, batch_size: int, world: int) -> int: ...
    def loss(self, model: nn.Module, batch: Batch) -> Tensor: ...
    def evaluate(self, model: nn.Module) -> dict[str, float]: ...
    def to(self, device: torch.device) -> None: ...


def shard(order: np.ndarray, batch_size: int, rank: int, world: int) -> Iterator[np.ndarray]:
    """Global batches of batch_size * world; this rank takes its slice of each (drop last)."""
    step = batch_size * world
    for start in range(0, len(order) - step + 1, step):
        yield order[start + rank * batch_size : start + (rank + 1) * batch_size]


def model_device(model: nn.Module) -> torch.device:
    """Where the model's weights live; evaluation batches are moved there."""
    return next(model.parameters()).device


def _augment_shift(x: Tensor, gen: torch.Generator, pad: int = 2) -> Tensor:
    """Random translation by up to `pad` pixels (zero fill in normalised space), (B, C, H, W)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), value=float(-fashion.MEAN / fashion.STD))
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    return padded[:, :, dy : dy + h, dx : dx + w]


def _reframed(x: Tensor, fraction: float, gen: torch.Generator) -> Tensor:
    """The first `fraction` of a normalised batch (B, 1, 28, 28) redrawn at another scale and
    position (models.data.framing.reframe); the batch is already in random order."""
    k = round(fraction * len(x))
    if k == 0:
        return x
    items = x[:k] * fashion.STD + fashion.MEAN
    moved = (framing.reframe(items, gen) - fashion.MEAN) / fashion.STD
    return torch.cat([moved, x[k:]])


@dataclass
class ClassificationTask:
    """Fashion-MNIST: 60k train, top-1 on the 10k test split."""

    root: str | None = None
    eval_limit: int | None = None
    seed: int = 0
    framing: float = 0.0  # fraction of each batch redrawn at another scale and position

    def __post_init__(self) -> None:
        images, self.y_train = fashion.load_split("train", self.root)
        self.x_train = torch.from_numpy(fashion.normalize(images))
        self.y_train = torch.from_numpy(self.y_train)
        test_images, test_labels = fashion.load_split("test", self.root)
        n = self.eval_limit or len(test_images)
        self.x_test = torch.from_numpy(fashion.normalize(test_images[:n]))
        self.y_test = torch.from_numpy(test_labels[:n])

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


def mean_iou(pred: Tensor, target: Tensor, num_classes: int) -> tuple[float, list[float]]:
    """mIoU over the classes present in prediction or target; also per-class IoU (nan if absent)."""
    ious = []
    for c in range(num_classes):
        p, t = pred == c, target == c
        union = (p | t).sum().item()
        ious.append((p & t).sum().item() / union if union else float("nan"))
    present = [v for v in ious if not math.isnan(v)]
    return sum(present) / len(present), ious


@dataclass
class SegmentationTask:
    """Composite scenes: a fresh set of train scenes each epoch, mIoU on 500 fixed test scenes."""

    root: str | None = None
    scenes_per_epoch: int = 20000
    test_scenes: int = 500
    seed: int = 0
    framing: float = 0.0  # fraction of each batch replaced by scenes of 14-64 px items

    def __post_init__(self) -> None:
        self.items, self.item_labels = fashion.load_split("train", self.root)
        self.device = torch.device("cpu")
        self.items_01 = torch.from_numpy(self.items.astype(np.float32) / 255.0)[:, None]
        self.labels_t = torch.from_numpy(self.item_labels)
        test_items, test_labels = fashion.load_split("test", self.root)
        images, masks = scenes.make_scenes(self.test_scenes, test_items, test_labels, seed=10_000)
        self.x_test = torch.from_numpy(fashion.normalize(images))
        self.y_test = torch.from_numpy(masks.astype(np.int64))

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
            yield xb, yb

    def to(self, device: torch.device) -> None:
        """Draw the scaled scenes on the training device."""
        self.device = device
        self.items_01, self.labels_t = self.items_01.to(device), self.labels_t.to(device)

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
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


@dataclass
class LanguageModelTask:
    """KJV: contiguous token windows of block_size + 1; bpc and perplexity on held-out books."""

    data_dir: str
    block_size: int
    eval_split: str = "test"
    seed: int = 0

    def __post_init__(self) -> None:
        folder = Path(self.data_dir)
        self.tokenizer = kjv.Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.train_ids = torch.tensor(self.encode((folder / "train.txt").read_text()))
        self.eval_text = {s: (folder / f"{s}.txt").read_text() for s in ("validation", "test")}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def steps_per_epoch(self, batch_size: int, world: int) -> int:
        windows = (len(self.train_ids) - 1) // self.block_size - 1  # fewest over random offsets
        return windows // (batch_size * world)

    def batches(self, epoch: int, batch_size: int, rank: int, world: int) -> Iterator[Batch]:
        rng = np.random.default_rng([self.seed, epoch])
        offset = int(rng.integers(self.block_size))  # new window boundaries each epoch
        n = (len(self.train_ids) - offset - 1) // self.block_size
        starts = offset + rng.permutation(n) * self.block_size
        for idx in shard(starts, batch_size, rank, world):
            rows = torch.from_numpy(idx).to(self.train_ids.device)[:, None]
            windows = self.train_ids[rows + torch.arange(self.block_size + 1, device=rows.device)]
            yield windows[:, :-1], windows[:, 1:]

    def to(self, device: torch.device) -> None:
        """Keep the training token stream on the training device."""
        self.train_ids = self.train_ids.to(device)

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        x, y = batch
        logits = model(x).logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    @torch.no_grad()
    def nll(self, model: nn.Module, text: str) -> tuple[float, int]:
        """Total NLL (nats) of every token of `text` and the token count.

        The stream starts with EOS so the first token is scored too; windows of block_size
        overlap by half so each token after the first window keeps half a context.
        """
        eos = self.tokenizer.token_to_id(kjv.EOS)
        ids = torch.tensor([eos, *self.encode(text)])
        total, stride, counted = 0.0, self.block_size // 2, 0
        for start in range(0, len(ids) - 1, stride):
            window = ids[start : start + self.block_size + 1]
            if len(window) < 2:
                break
            logits = model(window[None, :-1].to(model_device(model))).logits[0].float().cpu()
            losses = F.cross_entropy(logits, window[1:], reduction="none")
            skip = 0 if start == 0 else self.block_size - stride  # score each token once
            total += losses[skip:].sum().item()
            counted += len(losses) - skip
            if start + self.block_size + 1 >= len(ids):
                break
        return total, counted

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        for split, text in self.eval_text.items():
            nats, tokens = self.nll(model, text)
            out[f"{split}_bpc"] = nats / len(text) / math.log(2)
            out[f"{split}_perplexity"] = math.exp(nats / tokens)
            out[f"{split}_tokens"] = tokens
        return out
