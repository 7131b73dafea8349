"""Fashion-MNIST IDX parsing on the committed fixture files (256 train / 64 test images)."""

import gzip
from pathlib import Path

import numpy as np
import pytest

from training.data import fashion

ROOT = Path(__file__).parents[2] / "fixtures" / "fashion-mnist"


def test_read_idx_parses_gzipped_images_and_labels():
    images = fashion.read_idx(ROOT / "train-images-idx3-ubyte.gz")
    labels = fashion.read_idx(ROOT / "train-labels-idx1-ubyte.gz")
    assert images.shape == (256, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (256,) and set(labels.tolist()) <= set(range(10))


def test_read_idx_accepts_uncompressed_files(tmp_path):
    raw = gzip.decompress((ROOT / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "labels").write_bytes(raw)
    expected = fashion.read_idx(ROOT / "t10k-labels-idx1-ubyte.gz")
    assert np.array_equal(fashion.read_idx(tmp_path / "labels"), expected)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda raw: b"\x00\x01" + raw[2:],  # bad magic
        lambda raw: raw[:2] + b"\x0d" + raw[3:],  # float data type
        lambda raw: raw[:-5],  # truncated data
        lambda raw: raw + b"\x00",  # trailing bytes
    ],
)
def test_corrupted_idx_raises(tmp_path, corrupt):
    raw = gzip.decompress((ROOT / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "bad.gz").write_bytes(gzip.compress(corrupt(raw)))
    with pytest.raises(ValueError):
        fashion.read_idx(tmp_path / "bad.gz")


def test_load_split_and_normalize(monkeypatch):
    monkeypatch.setenv("NEUTRENO_FASHION_MNIST_DIR", str(ROOT))
    images, labels = fashion.load_split("test")
    assert images.shape == (64, 28, 28) and labels.dtype == np.int64 and len(labels) == 64
    x = fashion.normalize(images)
    assert x.shape == (64, 1, 28, 28) and x.dtype == np.float32
    assert x.min() == pytest.approx(-fashion.MEAN / fashion.STD)
