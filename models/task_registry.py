"""`make_task`: the task a model trains on, paper-scale variants by name, the others by family.

It lives apart from models/tasks.py (Fashion-MNIST, scenes, KJV) and models/paper_tasks.py
(ImageNet, ADE20K, WikiText-103), which builds on it, so neither imports the other back.
"""

from __future__ import annotations

from models.config import ModelConfig
from models.paper_tasks import TASKS, make_paper_task
from models.tasks import ClassificationTask, LanguageModelTask, SegmentationTask, Task


def make_task(cfg: ModelConfig, data_dir: str | None, seed: int, **kwargs: object) -> Task:
    """The task a model trains on: paper-scale variants by name, the others by family."""
    if cfg.name in TASKS:
        return make_paper_task(cfg, data_dir, seed, **kwargs)
    if cfg.family == "vit":
        return ClassificationTask(root=data_dir, seed=seed, **kwargs)
    if cfg.family == "segmenter":
        return SegmentationTask(root=data_dir, seed=seed, **kwargs)
    return LanguageModelTask(
        data_dir=data_dir or "data/kjv", block_size=cfg.block_size, seed=seed, **kwargs
    )
