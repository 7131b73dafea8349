"""The Task protocol every training task follows, and the helpers the tasks share.

Each task yields this rank's share of every epoch's batches (rank::world of one shuffled order,
so every rank sees the same number of batches), computes the loss of a batch, evaluates a model
on the held-out split, and states the facts of its data (DatasetFacts) and gives a few held-out
inputs (`sample`, for export's parity check) that the checkpoint keeps.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from models.checkpoint import DatasetFacts, Sample
from models.config import ModelConfig

C = TypeVar("C", bound=ModelConfig)

Batch = tuple[Tensor, Tensor]
# What `evaluate` reports: named values, and per-class lists (e.g. iou_per_class).
Metrics = Mapping[str, float | list[float]]


class Task(Protocol):
    @property
    def facts(self) -> DatasetFacts: ...
    def batches(self, epoch: int, batch_size: int, rank: int, world: int) -> Iterator[Batch]: ...
    def steps_per_epoch(self, batch_size: int, world: int) -> int: ...
    def loss(self, model: nn.Module, batch: Batch) -> Tensor: ...
    def evaluate(self, model: nn.Module) -> Metrics: ...
    def to(self, device: torch.device) -> None: ...
    def sample(self, n: int) -> Sample | None: ...


def shard(order: np.ndarray, batch_size: int, rank: int, world: int) -> Iterator[np.ndarray]:
    """Global batches of batch_size * world; this rank takes its slice of each (drop last)."""
    step = batch_size * world
    for start in range(0, len(order) - step + 1, step):
        yield order[start + rank * batch_size : start + (rank + 1) * batch_size]


def model_device(model: nn.Module) -> torch.device:
    """Where the model's weights live; evaluation batches are moved there."""
    return next(model.parameters()).device


def require_data_dir(data_dir: str | None, cfg: ModelConfig, layout: str) -> str:
    """data_dir, or a ValueError naming the data layout the variant needs."""
    if not data_dir:
        raise ValueError(f"{cfg.name} needs --data-dir pointing at {layout}")
    return data_dir


def require_config(task: type, cfg: ModelConfig, kind: type[C]) -> C:
    """cfg as the config class `kind` that `task` trains, or a ValueError naming both."""
    if not isinstance(cfg, kind):
        raise ValueError(
            f"{task.__name__} trains a {kind.__name__} model, not a {type(cfg).__name__}"
        )
    return cfg
