"""WikiText-103 raw files (wiki.{train,valid,test}.raw) and their byte-level BPE token stream.

`prepare` trains the tokenizer on the train split (the same construction as the KJV one, EOS id 0)
and encodes the train split once, writing tokenizer.json, train.ids.npy and prepared.json into
the data folder; later runs reuse them while the vocabulary size matches.

    python -m training.data.wikitext --data-dir /data/wikitext-103-raw --vocab-size 32768
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from training.data.kjv import train_tokenizer

FILES = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}
VOCAB_SIZE = 32768
TOKENIZER, TRAIN_IDS, META = "tokenizer.json", "train.ids.npy", "prepared.json"


def read_split(root: str | Path, split: str) -> str:
    """The raw text of 'train', 'validation' or 'test'."""
    return (Path(root) / FILES[split]).read_text(encoding="utf-8")


def word_count(text: str) -> int:
    """WikiText's word-level token count: space-separated words plus one <eos> per line."""
    return sum(len(line.split()) + 1 for line in text.splitlines())


def encode_lines(tokenizer: Tokenizer, text: str, chunk: int = 10_000) -> np.ndarray:
    """Ids of `text` encoded line by line (as the tokenizer was trained), (N,) uint16 or int32."""
    lines = text.splitlines(keepends=True)
    dtype = np.uint16 if tokenizer.get_vocab_size() <= 1 << 16 else np.int32
    parts = [
        np.array(
            [t for enc in tokenizer.encode_batch(lines[i : i + chunk]) for t in enc.ids],
            dtype=dtype,
        )
        for i in range(0, len(lines), chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def is_prepared(root: str | Path, vocab_size: int) -> bool:
    meta = Path(root) / META
    return meta.exists() and json.loads(meta.read_text()).get("vocab_size") == vocab_size


def prepare(root: str | Path, vocab_size: int = VOCAB_SIZE) -> Path:
    """Write tokenizer.json, train.ids.npy and prepared.json into `root` unless already there."""
    root = Path(root)
    if is_prepared(root, vocab_size):
        return root
    text = read_split(root, "train")
    tokenizer = train_tokenizer(text, vocab_size)
    tokenizer.save(str(root / TOKENIZER))
    ids = encode_lines(tokenizer, text)
    np.save(root / TRAIN_IDS, ids)
    meta = {"vocab_size": vocab_size, "train_tokens": len(ids), "train_chars": len(text)}
    (root / META).write_text(json.dumps(meta) + "\n")
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", required=True, help="folder holding wiki.{train,valid,test}.raw")
    ap.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    args = ap.parse_args(argv)
    prepare(args.data_dir, args.vocab_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
