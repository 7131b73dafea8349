"""King James Bible: `bible -f` parsing, the docs/ARCHITECTURE.md splits and the byte-level BPE
tokenizer."""

from pathlib import Path

import pytest

from training.data import kjv

FIXTURES = Path(__file__).parents[2] / "fixtures"
SAMPLE = FIXTURES / "bible-f-sample.txt"


def test_parse_strips_references():
    verses = kjv.parse_verses(SAMPLE.read_text() + "not a verse line\n")
    assert len(verses) == 15
    assert verses[0] == ("Ge", "In the beginning God created the heaven and the earth.")
    assert {book for book, _ in verses} == {"Ge", "1Jn", "Jude", "Rev", "2Chr"}


def test_read_bible_runs_the_command():
    assert kjv.read_bible(("cat", str(SAMPLE))) == kjv.parse_verses(SAMPLE.read_text())


def test_splits_follow_design():
    verses = kjv.parse_verses(SAMPLE.read_text())
    splits = kjv.split_verses(verses)
    by_text = dict((text, book) for book, text in verses)
    books = {k: {by_text[line] for line in v.splitlines()} for k, v in splits.items()}
    assert books == {"test": {"Rev"}, "validation": {"1Jn", "Jude"}, "train": {"Ge", "2Chr"}}
    assert all(text.endswith("\n") for text in splits.values())
    assert kjv.VALIDATION_BOOKS == {"1Jn", "2Jn", "3Jn", "Jude"}


@pytest.fixture(scope="module")
def tokenizer():
    return kjv.train_tokenizer((FIXTURES / "kjv-sample.txt").read_text(), vocab_size=400)


@pytest.mark.parametrize(
    "text",
    [
        "In the beginning God created the heaven and the earth.\n",
        "And   the naïve Spirit — “moved” 123\n\nupon the waters",
    ],
)
def test_tokenizer_round_trips_any_text(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text).ids) == text


def test_tokenizer_has_eos_zero_and_small_vocab(tokenizer):
    assert tokenizer.token_to_id(kjv.EOS) == 0
    assert tokenizer.get_vocab_size() <= 400
    assert len(tokenizer.encode("the earth").ids) < len("the earth")
