"""WikiText-103 raw files: tokenizer preparation and token stream on the tiny fixture."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from training.data import kjv, wikitext

FIXTURE = Path(__file__).parents[2] / "fixtures" / "paper" / "wikitext-103-raw"


@pytest.fixture
def data_dir(tmp_path):
    return Path(shutil.copytree(FIXTURE, tmp_path / "wt"))


def test_prepare_writes_tokenizer_and_train_stream_once(data_dir):
    wikitext.prepare(data_dir, vocab_size=300)
    tok = Tokenizer.from_file(str(data_dir / wikitext.TOKENIZER))
    ids = np.load(data_dir / wikitext.TRAIN_IDS)
    assert ids.dtype == np.uint16 and ids.max() < 300 and tok.token_to_id(kjv.EOS) == 0
    text = wikitext.read_split(data_dir, "train")
    assert tok.decode(ids.tolist()) == text
    stamp = (data_dir / wikitext.TRAIN_IDS).stat().st_mtime_ns
    wikitext.prepare(data_dir, vocab_size=300)
    assert (data_dir / wikitext.TRAIN_IDS).stat().st_mtime_ns == stamp
    assert not wikitext.is_prepared(data_dir, 512)


def test_word_count_adds_one_eos_per_line():
    assert wikitext.word_count(" = A = \n \n a b @-@ c .\n") == (3 + 1) + (0 + 1) + (5 + 1)
