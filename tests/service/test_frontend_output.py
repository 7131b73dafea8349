"""service.frontend.generation.output: the engine's ids become text in the front end; stop
strings hold back only what could still start one, and the check costs no more than the unsent
text (issue 19), with the tiny LM's real tokenizer."""

from __future__ import annotations

import json
import time

import pytest
from support.generation_helpers import NAME, tiny_lm

from service.frontend.generation.output import Chunk, OutputProcessor
from service.frontend.generation.tokenizer import TextTokenizer
from service.frontend.generation.validation import ValidRequest
from service.messages import SamplingParams, SeqOutput


@pytest.fixture(scope="module")
def tokenizer(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> TextTokenizer:
    bundle = tiny_lm(request.config, tmp_path_factory.mktemp("lm")) / "bundle" / NAME / "1"
    vocab = json.loads((bundle / "manifest.json").read_text())["generation"]["vocab_size"]
    return TextTokenizer(bundle / "tokenizer.json", None, vocab)


def _run(
    tokenizer: TextTokenizer, text: str, stop: tuple[str, ...], max_new: int = 10_000
) -> tuple[list[Chunk], float]:
    """Append `text`'s tokens one by one; (every chunk emitted, seconds spent appending)."""
    ids = tokenizer.encode(text)
    request = ValidRequest(
        0,
        "x",
        tuple(tokenizer.encode("x")),
        min(max_new, len(ids)),
        SamplingParams(),
        stop,
        None,
        False,
    )
    processor = OutputProcessor(request, tokenizer)
    chunks: list[Chunk] = []
    started = time.perf_counter()
    for n, token_id in enumerate(ids[: request.max_new_tokens], 1):
        finish = "length" if n == request.max_new_tokens else None  # as the engine says
        chunks += processor.process(SeqOutput(0, 0, [token_id], finish=finish))
        if processor.done:
            break
    seconds = time.perf_counter() - started
    return chunks, seconds


def test_text_before_a_stop_is_released_and_the_stop_cut(tokenizer: TextTokenizer) -> None:
    chunks, _ = _run(tokenizer, "and the light was good and the end", ("the end",))
    assert "".join(c.text for c in chunks) == "and the light was good and "
    assert chunks[-1].finish_reason == "stop"
    released_early = "".join(c.text for c in chunks[:-1])
    assert released_early.startswith("and the light")  # not all held until the end


def test_long_stop_prefix_held_back_then_released(tokenizer: TextTokenizer) -> None:
    stop = "a" * 255 + "b"
    text = "word " + "a" * 300 + " done"
    chunks, _ = _run(tokenizer, text, (stop,))
    assert "".join(c.text for c in chunks) == text
    assert chunks[-1].finish_reason == "length"


def test_check_cost_bounded_by_unsent_text(tokenizer: TextTokenizer) -> None:
    """2,000 tokens of ordinary text against 4 stop strings of 256 characters: the scan per
    token covers the few unsent characters, not 4 x 255 suffix lengths."""
    stops = tuple(c * 255 + "!" for c in "xyzq")
    text = " ".join(["and the light was good"] * 400)
    chunks, seconds = _run(tokenizer, text, stops)
    assert "".join(c.text for c in chunks) == text
    tokens = len(tokenizer.encode(text))
    print(f"{tokens} tokens in {seconds * 1000:.0f} ms ({seconds / tokens * 1e6:.0f} us each)")
    assert seconds / tokens < 200e-6
