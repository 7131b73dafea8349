"""The one mIoU: confusion counts and IoU per class, with an ignore index and absent classes."""

import math

import pytest
import torch

from training import metrics


def test_miou_from_confusion_ignores_255_and_absent_classes():
    target = torch.tensor([0, 0, 1, 1, 255, 255])
    pred = torch.tensor([0, 1, 1, 1, 2, 0])
    conf = metrics.confusion(pred, target, 3, 255)
    miou, per_class = metrics.iou_from_confusion(conf)
    assert per_class[:2] == [0.5, 2 / 3] and math.isnan(per_class[2])
    assert miou == pytest.approx((0.5 + 2 / 3) / 2) and conf.sum() == 4


def test_mean_iou_counts_every_pixel_without_an_ignore_index():
    target = torch.tensor([[0, 0], [2, 2]])
    pred = torch.tensor([[0, 2], [2, 2]])
    miou, per_class = metrics.mean_iou(pred, target, num_classes=3)
    assert per_class[0] == 0.5 and math.isnan(per_class[1]) and per_class[2] == 2 / 3
    assert miou == pytest.approx((0.5 + 2 / 3) / 2)
