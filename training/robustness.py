"""Held-out framing cases (issue 17), evaluated through the service's own decoding and resize.

Each case is a list of encoded pictures (PNG or JPEG bytes) and their truth; every picture goes
through service.frontend.imaging (open, decode, preprocess with the bundle's preprocessing)
exactly as a request would, then through the PyTorch checkpoint (the exported bundle matches it
to ~1e-5).

    python -m training.robustness checkpoints/fashion-classifier checkpoints/fashion-segmenter
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from export.bundle import AREA
from export.cli import load_facts, preprocessing_for
from models.checkpoint import load_checkpoint
from service.frontend import imaging
from training import runs
from training.data import fashion, framing, scenes
from training.metrics import mean_iou

MAX_PIXELS = 1 << 24
RESIZE_METHODS = ("bilinear", AREA)
SEED = 17
CLASSIFIER_ITEMS = 2000  # x 4 cases x 2 resize methods: minutes on a 2-core machine


@dataclass
class Case:
    """Encoded pictures and their truth: class indices, or (H, W) masks at picture size."""

    name: str
    pictures: list[bytes]
    truth: list[Any]


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def classifier_cases(limit: int | None = None) -> list[Case]:
    """The first `limit` test items: as they are, 4x upscaled (PNG and JPEG), and at 40-90 px
    placed off-centre on a 96x96 photo (one random placement per item)."""
    items, labels = fashion.load_split("test")
    items, labels = items[:limit], labels[:limit].tolist()
    rng = np.random.default_rng(SEED)
    return [
        Case("test items 28x28", [encode(Image.fromarray(i)) for i in items], labels),
        Case("4x upscaled 112x112 PNG", [encode(framing.upscaled(i, 4)) for i in items], labels),
        Case(
            "4x upscaled 112x112 JPEG q90",
            [encode(framing.upscaled(i, 4), "JPEG") for i in items],
            labels,
        ),
        Case(
            "one garment 40-90 px on 96x96",
            [
                encode(framing.placed_item(i, c, rng)[0])
                for i, c in zip(items, labels, strict=False)
            ],
            labels,
        ),
    ]


def segmenter_cases(limit: int = 500) -> list[Case]:
    """The 500 standard test scenes, the same upscaled 2x, and single test garments of 40-90 px
    on 96x96 photos; truth masks at the picture's size."""
    items, labels = fashion.load_split("test")
    images, masks = scenes.make_scenes(limit, items, labels, seed=10_000)
    up_masks = [np.kron(m, np.ones((2, 2), np.uint8)) for m in masks]
    rng = np.random.default_rng(SEED)
    placed = [
        framing.placed_item(items[k], int(labels[k]), rng)
        for k in rng.choice(len(items), limit, replace=False)
    ]
    return [
        Case("test scenes 64x64", [encode(Image.fromarray(i)) for i in images], list(masks)),
        Case("test scenes upscaled 2x", [encode(framing.upscaled(i, 2)) for i in images], up_masks),
        Case(
            "one garment 40-90 px on 96x96", [encode(p) for p, _ in placed], [m for _, m in placed]
        ),
    ]


def decoded(picture: bytes, pre: dict[str, Any]) -> tuple[np.ndarray, tuple[int, int]]:
    """The service's path: open (size check), decode, preprocess -> (1, C, H, W), (w, h)."""
    img = imaging.load_pixels(imaging.open_image(picture, MAX_PIXELS))
    return imaging.preprocess(img, pre), img.size


def batched(
    case: Case, pre: dict[str, Any], size: int = 250
) -> Iterator[tuple[torch.Tensor, list[tuple[int, int]], list[Any]]]:
    for start in range(0, len(case.pictures), size):
        rows = [decoded(p, pre) for p in case.pictures[start : start + size]]
        yield (
            torch.from_numpy(np.concatenate([r[0] for r in rows])),
            [r[1] for r in rows],
            case.truth[start : start + size],
        )


@torch.no_grad()
def top1(model: torch.nn.Module, case: Case, pre: dict[str, Any]) -> float:
    correct = 0
    for x, _, truth in batched(case, pre):
        correct += int((model(x).argmax(-1) == torch.tensor(truth)).sum())
    return correct / len(case.pictures)


@torch.no_grad()
def miou(model: torch.nn.Module, case: Case, pre: dict[str, Any]) -> float:
    """mIoU over all pictures' pixels at picture size (masks resized as the service does)."""
    preds, truths = [], []
    for x, sizes, truth in batched(case, pre, 100):
        for logits, size, mask in zip(model(x), sizes, truth, strict=False):
            preds.append(np.asarray(imaging.mask_at_size(logits.argmax(0).numpy(), size)).ravel())
            truths.append(np.asarray(mask).ravel())
    pred, target = torch.from_numpy(np.concatenate(preds)), torch.from_numpy(np.concatenate(truths))
    return mean_iou(pred.long(), target.long(), len(scenes.SCENE_LABELS))[0]


def evaluate(
    folder: Path, cases: list[Case], methods: tuple[str, ...] = RESIZE_METHODS
) -> dict[str, dict[str, float]]:
    """{case: {resize method: top-1 or mIoU}} of one checkpoint."""
    model, cfg = load_checkpoint(folder)
    pre = preprocessing_for(cfg, load_facts(folder, cfg))
    metric: Callable[[torch.nn.Module, Case, dict[str, Any]], float] = (
        miou if cfg.family == "segmenter" else top1
    )
    return {
        case.name: {method: metric(model, case, {**pre, "resize": method}) for method in methods}
        for case in cases
    }


@torch.no_grad()
def mask_classes(folder: Path, pictures: list[Path]) -> dict[str, dict[str, float]]:
    """{picture file name: {label: pixel fraction}} of a segmenter checkpoint's masks at picture
    size, through the service's decoding and the checkpoint's own preprocessing (e.g. the web
    page's demo samples: one garment should come out as one class beside the background)."""
    model, cfg = load_checkpoint(folder)
    pre = preprocessing_for(cfg, load_facts(folder, cfg))
    out = {}
    for path in pictures:
        x, size = decoded(path.read_bytes(), pre)
        mask = np.asarray(
            imaging.mask_at_size(model(torch.from_numpy(x))[0].argmax(0).numpy(), size)
        )
        ids, counts = np.unique(mask, return_counts=True)
        out[path.name] = {
            scenes.SCENE_LABELS[i]: round(float(c) / mask.size, 4)
            for i, c in zip(ids, counts, strict=True)
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument(
        "--limit", type=int, default=CLASSIFIER_ITEMS, help="classifier: the first N test items"
    )
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument(
        "--pictures",
        type=Path,
        nargs="+",
        help="segmenters: instead of the cases, the classes of these pictures' masks",
    )
    args = ap.parse_args(argv)
    if args.pictures:
        runs.emit_json({str(f): mask_classes(f, args.pictures) for f in args.checkpoints}, args.out)
        return 0
    results, cases = {}, {}
    for folder in args.checkpoints:
        family = load_checkpoint(folder)[1].family
        if family not in cases:  # the same pictures for every checkpoint of a family
            cases[family] = (
                segmenter_cases() if family == "segmenter" else classifier_cases(args.limit)
            )
        results[str(folder)] = evaluate(folder, cases[family])
    runs.emit_json(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
