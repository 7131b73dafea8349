"""Score a causal LM on documents alone (as lm-evaluation-harness does) and on running text.

lm-evaluation-harness (`loglikelihood_rolling`, its perplexity tasks) scores each document from
its first token: the only context is the end-of-text token, and every token of the document is
predicted. Bits per character over a set of documents = total NLL (nats) / total characters /
ln 2, the harness's `bits_per_byte` aggregate (KJV text is ASCII: characters = bytes). Running
text is the training task's view: one stream, EOS first, windows of block_size overlapping by
half so every token after the first window keeps half a window of context.

    python -m training.lm_eval checkpoints/kjv-lm checkpoints/lm-kjv-neutreno --out lm.json
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import Tensor, nn

from models.checkpoint import load_checkpoint
from models.config import LMConfig
from training import runs
from training.data import kjv

BATCH = 32
PROMPT = "And the LORD said unto Moses,"


@dataclass(frozen=True)
class Score:
    """Total NLL of the scored tokens and what it is spread over."""

    nats: float
    tokens: int
    chars: int
    first: float = 0.0  # of `nats`: on each document's first token (documents only)

    @property
    def bpc(self) -> float:
        return self.nats / self.chars / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats / self.tokens)


@torch.no_grad()
def token_nll(model: nn.Module, ids: Tensor, lengths: Tensor) -> Tensor:
    """NLL (nats) of each predicted token: ids (B, T) int64 right-padded, lengths (B,) real
    tokens per row (context token included) -> (B, T - 1), zero at padding.

    Right padding is safe: attention is causal, so padding never reaches a real position.
    """
    logits = model(ids[:, :-1]).logits.float()  # (B, T - 1, vocab)
    nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    real = torch.arange(1, ids.shape[1])[None, :] < lengths[:, None]
    return nll * real


@torch.no_grad()
def stream_nll(model: nn.Module, ids: Tensor, block_size: int) -> tuple[float, int]:
    """Total NLL (nats) of ids[1:] given everything before, and how many tokens that is.

    ids (N,) int64 with the context token first. Windows of block_size + 1 tokens move by
    block_size // 2; each token is scored once, in the first window that predicts it, after
    the first window with at least half a window of context.
    """
    total, counted, stride = 0.0, 0, block_size // 2
    for start in range(0, max(1, len(ids) - 1), stride):
        window = ids[start : start + block_size + 1]
        losses = token_nll(model, window[None], torch.tensor([len(window)]))[0]
        skip = 0 if start == 0 else block_size - stride
        total += float(losses[skip:].sum())
        counted += len(losses) - skip
        if start + block_size + 1 >= len(ids):
            break
    return total, counted


def context_ids(tokenizer: Tokenizer, prefix: str) -> list[int]:
    """The ids put before a document: EOS alone (the harness), or an encoded text."""
    eos = tokenizer.token_to_id(kjv.EOS)
    if prefix != kjv.EOS:
        return list(tokenizer.encode(prefix).ids)
    if eos is None:
        raise ValueError(f"the tokenizer has no {kjv.EOS}")
    return [eos]


def padded(rows: list[list[int]]) -> tuple[Tensor, Tensor]:
    """Rows of ids -> (B, T) int64 right-padded with 0 and their lengths (B,)."""
    lengths = torch.tensor([len(r) for r in rows])
    ids = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    return ids, lengths


@torch.no_grad()
def documents(
    model: nn.Module, tokenizer: Tokenizer, docs: list[str], block: int, prefix: str = kjv.EOS
) -> Score:
    """Every document on its own, with only `prefix` before it; all its tokens scored.

    block: the model's window (block_size); longer documents are scored as streams."""
    head = context_ids(tokenizer, prefix)
    rows = [head + tokenizer.encode(doc).ids for doc in docs]
    skip = len(head) - 1  # positions that predict the prefix's own later tokens
    short = sorted((r for r in rows if len(r) <= block + 1), key=len)
    nats, tokens = 0.0, 0
    for start in range(0, len(short), BATCH):
        ids, lengths = padded(short[start : start + BATCH])
        nats += float(token_nll(model, ids, lengths)[:, skip:].sum())
        tokens += int((lengths - 1 - skip).sum())
    for row in (r for r in rows if len(r) > block + 1):
        n, t = stream_nll(model, torch.tensor(row[skip:]), block)
        nats, tokens = nats + n, tokens + t
    firsts = torch.tensor([r[: len(head) + 1] for r in rows])  # (docs, prefix + 1)
    first = float(token_nll(model, firsts, torch.full((len(rows),), firsts.shape[1]))[:, -1].sum())
    return Score(nats, tokens, sum(len(d) for d in docs), first)


@torch.no_grad()
def running(model: nn.Module, tokenizer: Tokenizer, text: str, block: int) -> Score:
    """The text as one stream after EOS (the training task's test bpc); block: the window."""
    ids = torch.tensor(context_ids(tokenizer, kjv.EOS) + tokenizer.encode(text).ids)
    nats, tokens = stream_nll(model, ids, block)
    return Score(nats, tokens, len(text))


def penalised(logits: Tensor, seen: Tensor, repetition: float) -> Tensor:
    """repetition_penalty as the service applies it (vLLM, after CTRL): logits (vocab,) of the
    tokens already in the prompt or output (seen (vocab,) bool) are divided by the penalty
    where positive, multiplied where negative; 1 changes nothing."""
    hit = torch.where(logits > 0, logits / repetition, logits * repetition)
    return torch.where(seen, hit, logits)


@torch.no_grad()
def generate_ids(
    model: nn.Module,
    prompt_ids: list[int],
    new_tokens: int,
    block: int,
    *,
    temperature: float = 0.0,
    repetition: float = 1.0,
    seed: int = 0,
) -> list[int]:
    """Prompt ids + up to new_tokens ids (fewer if the window of `block` tokens fills), with the
    KV cache: temperature 0 is greedy, else sampling from a generator seeded with `seed`."""
    ids = list(prompt_ids)
    gen = torch.Generator().manual_seed(seed)
    out = model(torch.tensor([ids]))
    seen = torch.zeros(out.logits.shape[-1], dtype=torch.bool)
    seen[ids] = True
    for _ in range(min(new_tokens, block - len(ids))):
        logits = penalised(out.logits[0, -1].double(), seen, repetition)
        if temperature > 0:
            nxt = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen))
        else:
            nxt = int(logits.argmax())
        seen[nxt] = True
        ids.append(nxt)
        out = model(torch.tensor([[nxt]]), past=out.presents)
    return ids


def generate(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompt: str,
    new_tokens: int,
    block: int,
    *,
    temperature: float = 0.0,
    repetition: float = 1.0,
    seed: int = 0,
) -> str:
    """The prompt and its continuation as text (generate_ids on the encoded prompt)."""
    prompt_ids = tokenizer.encode(prompt).ids
    how = {"temperature": temperature, "repetition": repetition}
    ids = generate_ids(model, prompt_ids, new_tokens, block, seed=seed, **how)
    return str(tokenizer.decode(ids))


def tokenizer_of(folder: Path) -> Path:
    """A checkpoint's tokenizer.json; a kept-best checkpoint (RUN/best) uses its run's."""
    own = folder / "tokenizer.json"
    return own if own.exists() else folder.parent / "tokenizer.json"


def summary(score: Score, docs: int) -> dict[str, float]:
    """bpc, token perplexity and count; for documents also the mean NLL (nats) of a document's
    first token and the mean NLL per token after it."""
    out = {"bpc": score.bpc, "perplexity": score.perplexity, "tokens": score.tokens}
    if score.first:
        out["first_token_nats"] = score.first / docs
        out["later_token_nats"] = (score.nats - score.first) / (score.tokens - docs)
    return out


def evaluate(folder: Path, data: Path, new_tokens: int = 60) -> dict[str, object]:
    """One checkpoint: Revelation verse by verse (EOS, and a newline, as the only context),
    as running text, validation as running text, and two samples."""
    model, cfg = load_checkpoint(folder)
    if not isinstance(cfg, LMConfig):
        raise ValueError(f"{folder} is not a language model")
    block = cfg.block_size
    tokenizer = Tokenizer.from_file(str(tokenizer_of(folder)))
    test = (data / "test.txt").read_text()
    verses = test.splitlines()
    scores = {
        "verses_eos": documents(model, tokenizer, verses, block),
        "verses_newline": documents(model, tokenizer, verses, block, prefix="\n"),
        "running_test": running(model, tokenizer, test, block),
        "running_validation": running(
            model, tokenizer, (data / "validation.txt").read_text(), block
        ),
    }
    return {
        **{k: summary(s, len(verses)) for k, s in scores.items()},
        "verses": len(verses),
        "sample_t08_seed0": generate(model, tokenizer, PROMPT, new_tokens, block, temperature=0.8),
        "sample_greedy_rep1.3": generate(
            model, tokenizer, PROMPT, new_tokens, block, repetition=1.3
        ),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--data-dir", type=Path, default=Path("data/kjv"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {str(f): evaluate(f, args.data_dir) for f in args.checkpoints}
    runs.emit_json(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
