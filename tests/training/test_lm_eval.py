"""training.lm_eval: documents scored alone (lm-evaluation-harness style) and running text, on a
tiny random LM and a tokenizer trained on the KJV fixture."""

import math
from pathlib import Path

import pytest
import torch

from models import create_model
from training import lm_eval
from training.data import kjv

FIXTURES = Path(__file__).parents[1] / "fixtures"
BLOCK = 16


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return (FIXTURES / "kjv-sample.txt").read_text().splitlines()


@pytest.fixture(scope="module")
def tokenizer(lines):
    return kjv.train_tokenizer("\n".join(lines) + "\n", vocab_size=300)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    vocab = tokenizer.get_vocab_size()
    lm = create_model("lm-kjv", vocab_size=vocab, block_size=BLOCK, dim=32, depth=2, heads=2)
    return lm.eval()


def short_docs(tokenizer, lines, n=6):
    """Documents that fit one window with their EOS."""
    docs = [w for line in lines for w in line.split(", ")]
    return [d for d in docs if 2 < len(tokenizer.encode(d).ids) < BLOCK][:n]


def test_score_converts_nats_to_bits_per_character():
    score = lm_eval.Score(nats=10 * math.log(2), tokens=5, chars=4)
    assert score.bpc == pytest.approx(2.5)
    assert score.perplexity == pytest.approx(math.exp(10 * math.log(2) / 5))


def test_batched_documents_equal_one_at_a_time(model, tokenizer, lines):
    docs = short_docs(tokenizer, lines)
    together = lm_eval.documents(model, tokenizer, docs, BLOCK)
    alone = [lm_eval.documents(model, tokenizer, [d], BLOCK) for d in docs]
    assert together.nats == pytest.approx(sum(s.nats for s in alone), rel=1e-5)
    assert together.tokens == sum(len(tokenizer.encode(d).ids) for d in docs)
    assert together.chars == sum(len(d) for d in docs)
    assert together.first == pytest.approx(sum(s.first for s in alone), rel=1e-5)


def test_first_token_is_predicted_from_the_context_alone(model, tokenizer, lines):
    doc = short_docs(tokenizer, lines)[0]
    first_id = tokenizer.encode(doc).ids[0]
    with torch.no_grad():
        logits = model(torch.tensor([[0]])).logits[0, 0]
    expected = float(torch.nn.functional.cross_entropy(logits, torch.tensor(first_id)))
    score = lm_eval.documents(model, tokenizer, [doc], BLOCK)
    assert score.first == pytest.approx(expected, rel=1e-5) and score.first < score.nats


def test_a_document_alone_is_its_own_stream(model, tokenizer, lines):
    for doc in (short_docs(tokenizer, lines)[0], " ".join(lines[:3])):  # one window, several
        alone = lm_eval.documents(model, tokenizer, [doc], BLOCK)
        stream = lm_eval.running(model, tokenizer, doc, BLOCK)
        assert alone.tokens == stream.tokens == len(tokenizer.encode(doc).ids)
        assert alone.nats == pytest.approx(stream.nats, rel=1e-5)


def test_stream_in_one_window_matches_a_full_forward(model, tokenizer, lines):
    ids = torch.tensor([0, *tokenizer.encode(lines[0]).ids])[: BLOCK + 1]
    with torch.no_grad():
        logits = model(ids[None, :-1]).logits[0]
    full = torch.nn.functional.cross_entropy(logits, ids[1:], reduction="sum")
    nats, counted = lm_eval.stream_nll(model, ids, BLOCK)
    assert counted == len(ids) - 1
    assert nats == pytest.approx(float(full), rel=1e-5)


def test_context_counts_in_running_text(model, tokenizer, lines):
    """Verses scored alone lose their neighbours' context: not the same number as the stream."""
    docs = short_docs(tokenizer, lines)
    alone = lm_eval.documents(model, tokenizer, docs, BLOCK)
    newline = lm_eval.documents(model, tokenizer, docs, BLOCK, prefix="\n")
    assert newline.tokens == alone.tokens
    assert newline.nats != pytest.approx(alone.nats)


def test_greedy_is_the_models_own_greedy(model, tokenizer):
    text = lm_eval.generate(model, tokenizer, "And God said", 8, BLOCK)
    ids = torch.tensor([tokenizer.encode("And God said").ids])
    assert text == tokenizer.decode(model.greedy(ids, 8)[0].tolist())


def test_sampling_follows_the_seed_and_the_window(model, tokenizer):
    sample = lm_eval.generate(model, tokenizer, "And God", 10, BLOCK, temperature=0.8, seed=3)
    again = lm_eval.generate(model, tokenizer, "And God", 10, BLOCK, temperature=0.8, seed=3)
    other = lm_eval.generate(model, tokenizer, "And God", 10, BLOCK, temperature=0.8, seed=4)
    assert sample == again != other
    prompt = tokenizer.encode("And God").ids
    long = lm_eval.generate_ids(model, prompt, 100, BLOCK, repetition=1.3)
    assert len(long) == BLOCK and long[: len(prompt)] == prompt


def test_repetition_penalty_stops_greedy_repeats(model, tokenizer):
    prompt = tokenizer.encode("the").ids
    plain = lm_eval.generate_ids(model, prompt, 12, BLOCK)
    penalised = lm_eval.generate_ids(model, prompt, 12, BLOCK, repetition=1e6)
    assert len(set(penalised)) > len(set(plain))


def test_penalty_divides_positive_and_multiplies_negative_seen_logits():
    logits = torch.tensor([2.0, -2.0, 3.0])
    seen = torch.tensor([True, True, False])
    assert lm_eval.penalised(logits, seen, 2.0).tolist() == [1.0, -4.0, 3.0]


def test_a_kept_best_checkpoint_uses_its_runs_tokenizer(tmp_path):
    (tmp_path / "best").mkdir()
    (tmp_path / "tokenizer.json").write_text("{}")
    assert lm_eval.tokenizer_of(tmp_path / "best") == tmp_path / "tokenizer.json"
    assert lm_eval.tokenizer_of(tmp_path) == tmp_path / "tokenizer.json"
