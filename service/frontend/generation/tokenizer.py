"""The bundle's tokenizer (Hugging Face `tokenizers`, byte-level BPE) and incremental decoding.

Byte-level BPE can split one UTF-8 character over several tokens, so text is produced with the
TGI scheme: decode a short window of recent ids and release the new part only once it no longer
ends in an incomplete character (U+FFFD).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

REPLACEMENT = "\ufffd"


class TextTokenizer:
    """encode/decode for one LM bundle; `eos_id` ends generation."""

    def __init__(self, path: Path, eos_id: int | None, vocab_size: int) -> None:
        self._tok = Tokenizer.from_file(str(path))
        self.eos_id = eos_id
        self.vocab_size = vocab_size

    @classmethod
    def of_bundle(cls, bundle: Path, generation: dict[str, Any]) -> TextTokenizer:
        """The tokenizer of a text-generation bundle (its manifest's `generation` facts)."""
        return cls(
            bundle / "tokenizer.json", generation.get("eos_token_id"), generation["vocab_size"]
        )

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Text -> token ids (special tokens only when asked and the tokenizer defines them)."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        """Token ids -> text, special tokens (EOS) skipped."""
        return self._tok.decode(ids, skip_special_tokens=True)

    def token_text(self, token_id: int) -> str:
        """One token's own text, as logprobs report it (may be U+FFFD for a partial byte)."""
        return self.decode([token_id])


class IncrementalDecoder:
    """Turns a growing id list into text deltas that never cut a UTF-8 character."""

    def __init__(self, tokenizer: TextTokenizer, ids: list[int]) -> None:
        self._tok = tokenizer
        self.ids = list(ids)
        self._prefix = max(0, len(self.ids) - 6)
        self._read = len(self.ids)

    def push(self, token_id: int) -> str:
        """Append one id; return the text it completes ('' while a character is unfinished)."""
        self.ids.append(token_id)
        prefix_text = self._tok.decode(self.ids[self._prefix : self._read])
        new_text = self._tok.decode(self.ids[self._prefix :])
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return new_text[len(prefix_text) :]

    def flush(self) -> str:
        """Whatever text is still held back (an unfinished character at the end)."""
        prefix_text = self._tok.decode(self.ids[self._prefix : self._read])
        new_text = self._tok.decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""
