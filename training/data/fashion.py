"""Fashion-MNIST from its IDX files (Debian package dataset-fashion-mnist)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
# Pixel statistics of the 60k training images after scaling to [0, 1].
MEAN, STD = 0.2860, 0.3530
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def data_dir() -> Path:
    """The IDX folder: NEUTRENO_FASHION_MNIST_DIR, else the Debian package's path."""
    return Path(os.environ.get("NEUTRENO_FASHION_MNIST_DIR", DEFAULT_DIR))


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic 0x0000 | dtype 0x08 | ndim, then big-endian
    dims."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {data.size} bytes of data for dims {dims.tolist()}")
    return data.reshape(dims)


def load_split(split: str, root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """images (N, 28, 28) uint8 and labels (N,) int64 of 'train' (60k) or 'test' (10k)."""
    root = Path(root) if root else data_dir()
    img_file, lbl_file = FILES[split]
    images, labels = read_idx(root / img_file), read_idx(root / lbl_file).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels")
    return images, labels


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) -> float32 (N, 1, H, W), scaled to [0, 1] then standardised."""
    x = images.astype(np.float32)[:, None] / 255.0
    return (x - MEAN) / STD
