"""A model's tokenizer: text to tokens (control tokens recognised in template text only), tokens to bytes."""

from __future__ import annotations

import ctypes
import re
from collections.abc import Sequence
from typing import Any

from rpchat.prompt.segments import Segment

_SPECIAL_ATTRS = 1 | 8  # LLAMA_TOKEN_ATTR_UNKNOWN | CONTROL: what parse_special recognises in text


class Tokenizer:
    """Tokenize with one llama.cpp vocabulary (of a loaded model or of a vocab-only load)."""

    def __init__(self, llama_cpp: Any, vocab: Any) -> None:
        self._l = llama_cpp
        self.vocab = vocab
        self.bos = int(llama_cpp.llama_vocab_bos(vocab))
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        self.pieces: dict[int, tuple[bytes, bool]] = {}  # filled by `piece`; the per-token loop reads it
        self._special_re: re.Pattern[str] | None = None
        self._special_ids: dict[str, int] = {}
        self._special_indexed = False
        self._plain_templates: set[str] = set()  # template texts known to hold no control token

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Tokens of ``text`` (no BOS); ``special`` parses control-token text like ``</s>``."""
        L = self._l
        data = text.encode("utf-8", "replace")
        if not data:
            return []
        cap = len(data) + 16
        buf = (L.llama_token * cap)()
        n = L.llama_tokenize(self.vocab, data, len(data), buf, cap, False, special)
        if n < 0:
            cap = -n
            buf = (L.llama_token * cap)()
            n = L.llama_tokenize(self.vocab, data, len(data), buf, cap, False, special)
        return list(buf[:n])

    def count_tokens(self, text: str) -> int:
        """Number of tokens in ``text`` as plain text."""
        return len(self.tokenize(text))

    def tokenize_prompt(self, prompt: Sequence[Segment]) -> list[int]:
        """BOS once, then the prompt; control tokens are recognised in template text only.

        Text between control tokens is tokenized as one run across segment borders, so the result
        equals llama.cpp's own tokenization of the joined prompt wherever the user typed no
        control-token text.
        """
        tokens: list[int] = [self.bos] if self.add_bos and self.bos >= 0 else []
        run: list[str] = []
        for seg in prompt:
            if seg.kind != "template" or not self._has_special(seg.text):
                run.append(seg.text)
                continue
            assert self._special_re is not None
            pos = 0
            for m in self._special_re.finditer(seg.text):
                run.append(seg.text[pos : m.start()])
                tokens += self.tokenize("".join(run))
                run = []
                tokens.append(self._special_ids[m.group(0)])
                pos = m.end()
            run.append(seg.text[pos:])
        tokens += self.tokenize("".join(run))
        return tokens

    def piece(self, token: int) -> tuple[bytes, bool]:
        """(bytes of the token's text, is end-of-generation), cached in `pieces`."""
        L = self._l
        buf = ctypes.create_string_buffer(64)
        n = L.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
        entry = (buf.raw[: max(n, 0)], bool(L.llama_vocab_is_eog(self.vocab, token)))
        self.pieces[token] = entry
        return entry

    def _has_special(self, text: str) -> bool:
        # Indexing a 256k vocabulary takes a while, so it waits for the first template with a
        # control token in it (many formats, LimaRP included, have none).
        if not self._special_indexed:
            if text in self._plain_templates:
                return False
            if self.tokenize(text, special=True) == self.tokenize(text, special=False):
                if len(self._plain_templates) > 4096:
                    self._plain_templates.clear()
                self._plain_templates.add(text)
                return False
            self._index_special_tokens()
        return self._special_re is not None and self._special_re.search(text) is not None

    def _index_special_tokens(self) -> None:
        """Control tokens by text, so template segments can contain them and user text never does."""
        L, vocab = self._l, self.vocab
        get_attr, get_text = L.llama_vocab_get_attr, L.llama_vocab_get_text
        found: dict[str, int] = {}
        for tok in range(int(L.llama_vocab_n_tokens(vocab))):
            if get_attr(vocab, tok) & _SPECIAL_ATTRS:
                text = (get_text(vocab, tok) or b"").decode("utf-8", "replace")
                if text and text not in found:
                    found[text] = tok
        self._special_ids = found
        self._special_indexed = True
        # Longest first, as llama.cpp matches them.
        alternatives = sorted(found, key=len, reverse=True)
        self._special_re = re.compile("|".join(re.escape(t) for t in alternatives)) if found else None


__all__ = ["Tokenizer"]
