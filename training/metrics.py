"""Segmentation metrics, one implementation for every task and study: a confusion matrix and the
mIoU read from it (classes present in prediction or target, as mmseg reports it)."""

from __future__ import annotations

import torch
from torch import Tensor

NO_IGNORE = -1  # an ignore index no class uses


def confusion(pred: Tensor, target: Tensor, num_classes: int, ignore: int = NO_IGNORE) -> Tensor:
    """(num_classes, num_classes) int64 counts [target, pred] over pixels whose target != ignore.

    pred and target: int64 class indices of one shape (any, e.g. (N, H, W) or flat).
    """
    valid = target != ignore
    flat = target[valid] * num_classes + pred[valid]
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_from_confusion(conf: Tensor) -> tuple[float, list[float]]:
    """mIoU over classes present in prediction or target, and per-class IoU (nan if absent)."""
    inter = conf.diag().double()
    union = conf.sum(0).double() + conf.sum(1).double() - inter
    ious = torch.where(union > 0, inter / union.clamp(min=1), torch.nan)
    return ious.nanmean().item(), ious.tolist()


def mean_iou(
    pred: Tensor, target: Tensor, num_classes: int, ignore: int = NO_IGNORE
) -> tuple[float, list[float]]:
    """mIoU and per-class IoU of predicted against true class indices (int64, same shape)."""
    return iou_from_confusion(confusion(pred, target, num_classes, ignore))
