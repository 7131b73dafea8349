"""Framing: Fashion-MNIST items at other scales and positions, as a user's photo shows them.

Training side (torch, on the training device, batched): `reframe` renders 28x28 items at a
random scale and position on a larger canvas and reduces it to the model input by area
averaging, which is what the service's "area" resize does to such a photo; `scaled_scenes`
composes segmentation scenes with items from 14 to 64 px. Rendering is supersampled (drawn at
`SUPERSAMPLE` times the output size, then average-pooled) so shrunken items are antialiased.

Evaluation side (numpy + PIL, deterministic from a seed): the held-out cases of issue 17, built
as pictures (uint8) that then go through the service's own preprocessing (training.robustness).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from training.data.scenes import CANVAS, THRESHOLD

SUPERSAMPLE = 4
MIN_SCALE = 0.4  # item size / canvas size; 40-90 px garments on a 96 px photo are 0.42-0.94
SCENE_ITEM_PX = (14, 64)
SCENE_MAX_PX = {1: 64, 2: 44, 3: 36, 4: 30}  # largest item size for k items in one scene


def _render(items: Tensor, scale: Tensor, centre: Tensor, out: int) -> Tensor:
    """Draw items (B, 1, h, w) in [0, 1] on black canvases (B, 1, out, out).

    scale: (B,) item side / canvas side; centre: (B, 2) item centre (x, y) in the canvas'
    [-1, 1] coordinates. Drawn at SUPERSAMPLE x `out`, then area-reduced.
    """
    theta = torch.zeros(len(items), 2, 3, device=items.device, dtype=items.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
    theta[:, :, 2] = -centre / scale[:, None]
    size = out * SUPERSAMPLE
    grid = F.affine_grid(theta, [len(items), 1, size, size], align_corners=False)
    big = F.grid_sample(items, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return F.avg_pool2d(big, SUPERSAMPLE)


def _uniform(
    n: int, low: float | Tensor, high: float | Tensor, gen: torch.Generator, device: torch.device
) -> Tensor:
    return (low + (high - low) * torch.rand(n, generator=gen)).to(device)


def reframe(items: Tensor, gen: torch.Generator, min_scale: float = MIN_SCALE) -> Tensor:
    """Items (B, 1, 28, 28) in [0, 1] redrawn at a random scale in [min_scale, 1] of the frame
    and a random position inside it, area-reduced back to 28x28 (B, 1, 28, 28)."""
    n, device = len(items), items.device
    scale = _uniform(n, min_scale, 1.0, gen, torch.device("cpu"))
    centre = (torch.rand(n, 2, generator=gen) * 2 - 1) * (1 - scale)[:, None]
    return _render(items, scale.to(device), centre.to(device), items.shape[-1])


def scaled_scenes(
    items: Tensor, labels: Tensor, n: int, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """n scenes (n, 1, 64, 64) in [0, 1] and masks (n, 64, 64) int64 in [0, 10].

    items (N, 1, 28, 28) in [0, 1] and labels (N,) live on the training device. A scene holds
    1-4 items of 14 px up to SCENE_MAX_PX[k] px at random positions; later items are drawn over
    earlier ones. A pixel is labelled item class + 1 where the drawn item is >= THRESHOLD / 255,
    the rule of the standard scenes (training.data.scenes).
    """
    device = items.device
    count = torch.randint(1, 5, (n,), generator=gen)
    largest = torch.tensor([SCENE_MAX_PX[int(k)] for k in count], dtype=torch.float32)
    canvas = torch.zeros(n, 1, CANVAS, CANVAS, device=device)
    mask = torch.zeros(n, CANVAS, CANVAS, dtype=torch.int64, device=device)
    for slot in range(4):
        pick = torch.randint(len(items), (n,), generator=gen).to(device)
        px = _uniform(n, float(SCENE_ITEM_PX[0]), largest, gen, torch.device("cpu"))
        scale = px / CANVAS
        centre = (torch.rand(n, 2, generator=gen) * 2 - 1) * (1 - scale)[:, None]
        drawn = _render(items[pick], scale.to(device), centre.to(device), CANVAS)
        fg = (drawn[:, 0] >= THRESHOLD / 255) & (slot < count).to(device)[:, None, None]
        canvas = torch.where(fg[:, None], drawn, canvas)
        mask = torch.where(fg, labels[pick][:, None, None] + 1, mask)
    return canvas, mask


ENLARGE_FACTORS = (2, 3, 4)


def rephotographed(images: Tensor, gen: torch.Generator) -> Tensor:
    """Images (B, 1, H, W) in [0, 1] as the service sees a 2-4x larger photo of them: enlarged
    bilinearly by a random factor in ENLARGE_FACTORS (PIL's BILINEAR enlargement: pixel-centre
    aligned, as align_corners=False), then area-reduced back to H x W (B, 1, H, W). A slightly
    blurred copy with the same geometry, so the masks stay as they are."""
    factors = torch.tensor(ENLARGE_FACTORS)[
        torch.randint(len(ENLARGE_FACTORS), (len(images),), generator=gen)
    ]
    out = images.clone()
    for f in ENLARGE_FACTORS:
        rows = (factors == f).nonzero().flatten().to(images.device)
        if len(rows):
            big = F.interpolate(images[rows], scale_factor=f, mode="bilinear", align_corners=False)
            out[rows] = F.avg_pool2d(big, f)
    return out


def upscaled(image: np.ndarray, factor: int) -> Image.Image:
    """A uint8 picture enlarged `factor` times (bilinear), as a 'bigger photo' of it."""
    h, w = image.shape
    return Image.fromarray(image).resize((w * factor, h * factor), Image.Resampling.BILINEAR)


def placed_item(
    item: np.ndarray,
    label: int,
    rng: np.random.Generator,
    canvas: int = 96,
    size_px: tuple[int, int] = (40, 90),
) -> tuple[Image.Image, np.ndarray]:
    """One garment enlarged to 40-90 px and put at a random (usually off-centre) place on a
    black canvas x canvas photo; returns the photo and its (canvas, canvas) label mask
    (label + 1 where the enlarged item >= THRESHOLD)."""
    size = int(rng.integers(size_px[0], size_px[1] + 1))
    y, x = (int(v) for v in rng.integers(0, canvas - size + 1, 2))
    big = np.asarray(Image.fromarray(item).resize((size, size), Image.Resampling.BILINEAR))
    photo = np.zeros((canvas, canvas), np.uint8)
    photo[y : y + size, x : x + size] = big
    mask = np.zeros((canvas, canvas), np.uint8)
    mask[y : y + size, x : x + size] = np.where(big >= THRESHOLD, label + 1, 0)
    return Image.fromarray(photo), mask
