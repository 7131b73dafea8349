"""The King James Bible from `bible -f` (Debian package bible-kjv), its splits and BPE tokenizer.

Splits (docs/ARCHITECTURE.md): test = Revelation; validation = 1 John, 2 John, 3 John, Jude;
train = the rest.
Text is one verse a line with the reference stripped.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

REFERENCE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) ")
TEST_BOOKS = {"Rev"}
VALIDATION_BOOKS = {"1Jn", "2Jn", "3Jn", "Jude"}
EOS = "<|endoftext|>"


def read_bible(
    command: tuple[str, ...] = ("bible", "-f", "Gen1:1-Rev22:21"),
) -> list[tuple[str, str]]:
    """(book abbreviation, verse text) for all 31,102 verses."""
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return parse_verses(out)


def parse_verses(text: str) -> list[tuple[str, str]]:
    """Parse `bible -f` output lines like 'Ge1:1 In the beginning ...'."""
    verses = []
    for line in text.splitlines():
        m = REFERENCE.match(line)
        if m:
            verses.append((m.group(1), line[m.end() :].strip()))
    return verses


def split_verses(verses: list[tuple[str, str]]) -> dict[str, str]:
    """{'train', 'validation', 'test'} -> text, one verse per line."""
    parts: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for book, text in verses:
        key = (
            "test" if book in TEST_BOOKS else "validation" if book in VALIDATION_BOOKS else "train"
        )
        parts[key].append(text)
    return {k: "\n".join(v) + "\n" for k, v in parts.items()}


def train_tokenizer(text: str, vocab_size: int = 4096) -> Tokenizer:
    """Byte-level BPE (any input string encodes) with EOS as id 0."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.splitlines(keepends=True), trainer)
    return tok


def prepare(out: str | Path, vocab_size: int = 4096) -> Path:
    """Write train/validation/test .txt and tokenizer.json under `out`/kjv; returns that folder."""
    folder = Path(out) / "kjv"
    folder.mkdir(parents=True, exist_ok=True)
    splits = split_verses(read_bible())
    for name, text in splits.items():
        (folder / f"{name}.txt").write_text(text)
    train_tokenizer(splits["train"], vocab_size).save(str(folder / "tokenizer.json"))
    return folder
