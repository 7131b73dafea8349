"""The training tasks and `make_task`, the one place that says which task a model trains on:
paper-scale variants by name (PAPER_TASKS), the others by model family.

    fashion.py  FashionMNISTTask (classification), FashionScenesTask (segmentation)
    text.py     KJVTask, WikiText103Task (language modelling on a tokenized corpus)
    paper.py    ImageNetTask, ADE20KTask
    base.py     the Task protocol and the helpers they share
"""

from __future__ import annotations

from typing import Any

from models.config import LMConfig, ModelConfig
from training.tasks.base import Task
from training.tasks.fashion import FashionMNISTTask, FashionScenesTask
from training.tasks.paper import ADE20KTask, ImageNetTask
from training.tasks.text import KJVTask, WikiText103Task

PAPER_TASKS: dict[str, type[ImageNetTask] | type[ADE20KTask] | type[WikiText103Task]] = {
    "deit-tiny": ImageNetTask,
    "segmenter-tiny-ade20k": ADE20KTask,
    "lm-wt103-small": WikiText103Task,
}

__all__ = [
    "ADE20KTask",
    "FashionMNISTTask",
    "FashionScenesTask",
    "ImageNetTask",
    "KJVTask",
    "PAPER_TASKS",
    "Task",
    "WikiText103Task",
    "make_task",
]


def make_task(cfg: ModelConfig, data_dir: str | None, seed: int, **kwargs: Any) -> Task:
    """The task a model trains on: paper-scale variants by name, the others by family.

    kwargs go to the task's constructor as they are (training.train.task_options)."""
    if cfg.name in PAPER_TASKS:
        return PAPER_TASKS[cfg.name].from_config(cfg, data_dir, seed, **kwargs)
    if cfg.family == "vit":
        return FashionMNISTTask(root=data_dir, seed=seed, **kwargs)
    if cfg.family == "segmenter":
        return FashionScenesTask(root=data_dir, seed=seed, **kwargs)
    assert isinstance(cfg, LMConfig), cfg  # the third family (models.config.CONFIG_CLASSES)
    return KJVTask(data_dir=data_dir or "data/kjv", block_size=cfg.block_size, seed=seed, **kwargs)
