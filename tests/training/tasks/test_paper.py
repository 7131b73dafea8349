"""Paper-scale tasks on tiny fixtures: dispatch, sharding, sliding windows, mIoU, 2 train steps."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from models.registry import get_config
from neutreno.command import CommandError
from training.data import imagenet
from training.tasks import FashionMNISTTask, make_task
from training.tasks import paper as paper_tasks
from training.train import main, parse_overrides

FIXTURES = Path(__file__).parents[2] / "fixtures"
IMAGENET = str(FIXTURES / "paper" / "imagenet")
ADE20K = str(FIXTURES / "paper" / "ADEChallengeData2016")
WIKITEXT = FIXTURES / "paper" / "wikitext-103-raw"


@pytest.fixture(autouse=True)
def no_workers(monkeypatch):
    monkeypatch.setenv("NEUTRENO_DATA_WORKERS", "0")


def test_variant_name_chooses_the_task():
    task = make_task(get_config("deit-tiny", img_size=32), IMAGENET, seed=0)
    assert isinstance(task, paper_tasks.ImageNetTask) and task.num_workers == 0
    assert task.facts.labels == ["n01440764", "n01443537", "n01484850"]  # the class folders
    assert task.facts.mean == [0.485, 0.456, 0.406] and task.facts.std == [0.229, 0.224, 0.225]
    inputs, words = task.sample(16)
    assert inputs.shape == (6, 3, 32, 32) and words == "6 ImageNet val images"
    fashion = make_task(get_config("vit-fashion"), str(FIXTURES / "fashion-mnist"), seed=0)
    assert isinstance(fashion, FashionMNISTTask)
    with pytest.raises(ValueError, match="--data-dir"):
        make_task(get_config("segmenter-tiny-ade20k"), None, seed=0)


def test_ranks_get_disjoint_equal_shards_and_workers_do_not_change_batches():
    ds = imagenet.ImageNet(IMAGENET, "train", size=16, train=True)
    shards = [list(paper_tasks.train_loader(ds, 0, 2, rank, 2, 0, 0)) for rank in range(2)]
    assert [len(s) for s in shards] == [3, 3]
    labels = torch.cat([y for s in shards for _, y in s]).sort().values
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    parallel = list(paper_tasks.train_loader(ds, 0, 2, 0, 2, 0, 1))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(shards[0], parallel, strict=False))


@pytest.mark.parametrize("size", [(20, 20), (32, 50), (70, 41)])
def test_sliding_windows_cover_every_pixel_once_averaged(size):
    x = torch.randn(1, 3, *size)
    assert torch.allclose(paper_tasks.slide_logits(lambda w: w * 2, x, crop=32, stride=24), 2 * x)
    assert paper_tasks.window_starts(70, 32, 32) == [0, 32, 38]


def test_set_overrides_parse_literals_and_strings():
    assert parse_overrides(["img_size=32", "lam=0.5", "attention=softmax"]) == {
        "img_size": 32,
        "lam": 0.5,
        "attention": "softmax",
    }
    with pytest.raises(CommandError, match="KEY=VALUE"):
        parse_overrides(["img_size"])


def _train(tmp_path: Path, model: str, data_dir: str, *overrides: str) -> dict:
    out = tmp_path / model
    argv = [
        model,
        "--data-dir",
        data_dir,
        "--out",
        str(out),
        "--max-steps",
        "2",
        "--depth",
        "1",
        "--batch-size",
        "2",
        "--no-progress",
    ]
    argv += [a for o in ("dim=32", "heads=2", *overrides) for a in ("--set", o)]
    assert main(argv) == 0
    return json.loads((out / "metrics.json").read_text())


def test_deit_trains_two_steps_on_imagenet_folders(tmp_path):
    metrics = _train(tmp_path, "deit-tiny", IMAGENET, "img_size=32", "num_classes=3")
    assert metrics["step"] == 2 and math.isfinite(metrics["loss"])
    assert metrics["val_images"] == 6 and 0 <= metrics["top1"] <= metrics["top5"] <= 1


def test_segmenter_trains_two_steps_on_ade20k(tmp_path):
    metrics = _train(tmp_path, "segmenter-tiny-ade20k", ADE20K, "img_size=32", "decoder_heads=2")
    assert metrics["step"] == 2 and math.isfinite(metrics["loss"])
    assert metrics["val_images"] == 2 and 0 <= metrics["miou"] <= 1
    assert len(metrics["iou_per_class"]) == 150


def test_lm_trains_two_steps_on_wikitext(tmp_path):
    data = shutil.copytree(WIKITEXT, tmp_path / "wt")
    metrics = _train(tmp_path, "lm-wt103-small", str(data), "vocab_size=512", "block_size=32")
    assert metrics["step"] == 2 and math.isfinite(metrics["loss"])
    for split in ("validation", "test"):
        assert metrics[f"{split}_bpc"] > 0 and metrics[f"{split}_word_perplexity"] > 1
    assert (tmp_path / "lm-wt103-small" / "tokenizer.json").exists()


def test_wikitext_batches_are_int64_windows(tmp_path):
    data = shutil.copytree(WIKITEXT, tmp_path / "wt")
    cfg = get_config("lm-wt103-small", vocab_size=300, block_size=32, depth=1, dim=32, heads=2)
    task = make_task(cfg, str(data), seed=0)
    x, y = next(task.batches(0, 4, 0, 1))
    assert x.shape == y.shape == (4, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
