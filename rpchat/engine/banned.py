"""Banned phrases with backtracking ("anti-slop") for the local engine.

When the reply completes a banned phrase, the KV cache, the sampler chain and the text go back to
the token where the phrase began, that token is banned at that position only, and sampling goes on
from there with the usual chain and seed. The stream holds back only the text that could still grow
into a banned phrase (rounded out to the token it starts in, since a rewind takes whole tokens), so
nothing shown is ever taken back.

Matching folds case and quotes one character at a time (`fold`), so offsets in the folded text
are offsets in the reply. Characters split over tokens belong to the token holding their first byte.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rpchat.engine.base import Result
from rpchat.engine.kvcache import KVCache
from rpchat.engine.textstream import Utf8Pieces
from rpchat.errors import ConfigError

if TYPE_CHECKING:
    # Only types: the sampler bindings (numpy, llama_cpp) load when a reply starts.
    from rpchat.engine.sampling import ChainCheckpoint, SamplerChain

DEFAULT_FILE = Path(__file__).with_name("banned_phrases.yaml")
MAX_REWINDS = 64  # per reply; then phrases are let through
MAX_BANS_AT = 8  # tokens banned at one position before the phrase there is let through
BANNED_LOGIT = -1e30  # finite: some samplers take logs or entropies of what they are given

_QUOTES = {"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "`": "'",
           "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"', "\u00ab": '"',
           "\u00bb": '"'}


@cache
def _fold_char(ch: str) -> str:
    low = _QUOTES.get(ch) or ch.lower()
    return low if len(low) == 1 else ch  # one character in, one out: offsets stay offsets


def fold(text: str) -> str:
    """Text as matching sees it: lower case, curly quotes and apostrophes straight, same length."""
    return "".join(map(_fold_char, text))


def clean_phrases(phrases: Iterable[str]) -> tuple[str, ...]:
    """Phrases stripped, blank lines and repeats (after folding) dropped, in order."""
    seen: dict[str, str] = {}
    for phrase in phrases:
        text = " ".join(str(phrase).split())
        if text:
            seen.setdefault(fold(text), text)
    return tuple(seen.values())


def load_phrases(path: Path) -> tuple[str, ...]:
    """A YAML list of phrases (a bare list or ``phrases: [...]``); ConfigError names the file."""
    from rpchat.yamlfile import load_yaml

    data = load_yaml(path)
    if isinstance(data, dict):
        data = data.get("phrases")
    if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
        raise ConfigError("banned phrases must be a list of strings", path)
    return clean_phrases(data)


def default_phrases() -> tuple[str, ...]:
    """The list shipped with rpchat."""
    return load_phrases(DEFAULT_FILE)


class PhraseMatcher:
    """Finds banned phrases in folded text and the tail that could still become one."""

    def __init__(self, phrases: Iterable[str]) -> None:
        self.phrases = tuple(dict.fromkeys(fold(p) for p in clean_phrases(phrases)))
        self.longest = max(map(len, self.phrases), default=0)
        self._prefixes = {p[:k] for p in self.phrases for k in range(1, len(p))}

    def find(self, text: str, start: int) -> tuple[int, int] | None:
        """The earliest complete phrase in ``text[start:]`` as (begin, end), or None."""
        best: tuple[int, int] | None = None
        for phrase in self.phrases:
            i = text.find(phrase, start)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, i + len(phrase))
        return best

    def open_from(self, text: str, start: int) -> int:
        """Where the longest tail of ``text[start:]`` that begins some phrase starts (len: none)."""
        n = len(text)
        prefixes = self._prefixes
        for k in range(min(self.longest - 1, n - start), 0, -1):
            if text[n - k :] in prefixes:
                return n - k
        return n


class _Reply:
    """The reply's tokens and text, with what is needed to cut both back to any held token."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.starts: list[int] = []  # offset in `text` of the first character each token adds to
        self.pending: list[bytes] = []  # unfinished character bytes before each token
        self.marks: list[ChainCheckpoint | None] = []  # sampler state before each token
        self.text = ""
        self.folded = ""
        self.utf8 = Utf8Pieces()
        self._released = 0  # marks before this index are closed

    def add(self, token: int, data: bytes, mark: ChainCheckpoint) -> None:
        self.tokens.append(token)
        self.starts.append(len(self.text))
        self.pending.append(self.utf8.pending())
        self.marks.append(mark)
        new = self.utf8.feed(data)
        self.text += new
        self.folded += fold(new)

    def token_at(self, char: int) -> int:
        """The token holding the first byte of character ``char`` (len(tokens) when none yet)."""
        if char >= len(self.text) and not self.utf8.pending():
            return len(self.tokens)
        i = bisect_right(self.starts, char) - 1
        # a token that starts inside `char` (bytes carried over) comes after that first byte
        while i > 0 and self.starts[i] == char and self.pending[i]:
            i -= 1
        return max(i, 0)

    def char_of(self, token: int) -> int:
        """Text that is safe from a rewind to ``token``."""
        return self.starts[token] if token < len(self.tokens) else len(self.text)

    def cut(self, token: int) -> ChainCheckpoint:
        """Drop ``token`` and everything after it; returns the sampler state before it."""
        mark = self.marks[token]
        assert mark is not None, "rewind behind the stream"
        for later in self.marks[token + 1 :]:
            if later is not None:
                later.close()
        self.utf8.restore(self.pending[token])
        self.text = self.text[: self.starts[token]]
        self.folded = self.folded[: self.starts[token]]
        del self.tokens[token:], self.starts[token:], self.pending[token:], self.marks[token:]
        return mark

    def release(self, upto: int) -> None:
        """Tokens before ``upto`` are shown: their checkpoints are never needed again."""
        for i in range(self._released, min(upto, len(self.marks))):
            mark = self.marks[i]
            if mark is not None:
                mark.close()
                self.marks[i] = None
        self._released = max(self._released, upto)

    def close(self) -> None:
        self.release(len(self.marks))


class PhraseGuard:
    """Banned phrases for the per-token loop (`rpchat.engine.generation`), which consults it before
    each sample (`before_sample`) and with each sampled token (`add`).

    When the reply completes a phrase, the KV cache and the sampler chain go back to the token where
    it began and that token is banned there; `add` then returns None and `redo` is the token to
    decode again (the one before the phrase). Otherwise `add` returns the text that is safe to show.
    """

    def __init__(self, llama_cpp: Any, phrases: Sequence[str], sampler: SamplerChain, cache: KVCache,
                 prompt: Sequence[int], result: Result) -> None:
        self._logits_of = llama_cpp.llama_get_logits_ith
        self._matcher = PhraseMatcher(phrases)
        self._sampler = sampler
        self._cache = cache
        self._prompt = prompt
        self._result = result
        self._reply = _Reply()
        self._bans: dict[int, set[int]] = {}  # reply position -> tokens banned there
        self._exhausted: set[int] = set()  # positions where every candidate was banned
        self._shown = 0  # characters of the reply's text released to the stream
        self._allowed = 0  # a phrase starting before this offset was let through (a cap was hit)
        self._mark: ChainCheckpoint | None = None  # the sampler state before the token being sampled
        self._banned_here: set[int] | None = None
        self.redo = -1  # after a rewind: the token to decode again

    @property
    def n_tokens(self) -> int:
        """Tokens in the reply (after any rewind)."""
        return len(self._reply.tokens)

    def before_sample(self) -> None:
        """Ban the tokens already tried at this position, and remember the sampler's state."""
        banned_here = self._bans.get(len(self._reply.tokens))
        if banned_here:
            logits = self._logits_of(self._cache.ctx, -1)
            for tok in banned_here:
                logits[tok] = BANNED_LOGIT
        self._banned_here = banned_here
        self._mark = self._sampler.checkpoint()

    def add(self, tok: int, data: bytes) -> str | None:
        """Take the sampled ``tok`` (its bytes ``data``): text now safe to show, or None after a rewind."""
        reply, matcher = self._reply, self._matcher
        mark, self._mark = self._mark, None
        assert mark is not None, "add without before_sample"
        at = len(reply.tokens)
        if self._banned_here and tok in self._banned_here:
            self._exhausted.add(at)  # every candidate is banned: this one stays
        reply.add(tok, data, mark)
        hit = matcher.find(reply.folded, max(self._shown, self._allowed))
        if hit is not None and self._rewind(reply.token_at(hit[0])):
            return None
        if hit is not None:
            self._allowed = hit[1]  # give up on this one gracefully (recurrent state cannot be cut)
        hold = reply.token_at(matcher.open_from(reply.folded, max(self._shown, self._allowed)))
        upto = reply.char_of(hold)
        if upto <= self._shown:
            return ""
        text = reply.text[self._shown : upto]
        self._shown = upto
        reply.release(hold)
        return text

    def _rewind(self, back: int) -> bool:
        """Go back to before reply token ``back``; False when a cap or the KV cache says no."""
        reply, cache, result = self._reply, self._cache, self._result
        tried = self._bans.setdefault(back, set())
        keep = len(self._prompt) + back - 1  # the KV cache is cut one token short of `back`
        if (result.rewinds >= MAX_REWINDS or len(tried) >= MAX_BANS_AT or back in self._exhausted
                or reply.marks[back] is None):
            return False
        # The cache holds the prompt and the reply before the newest token; the token before `back`
        # is decoded again for the logits at `back`.
        last = cache.tokens[keep]
        if not cache.truncate(keep):
            return False
        tried.add(reply.tokens[back])
        for later in [p for p in self._bans if p > back]:
            del self._bans[later]
        self._exhausted = {p for p in self._exhausted if p < back}
        result.rewinds += 1
        result.tokens_resampled += len(reply.tokens) - back
        with_mark = reply.cut(back)
        self._sampler.rewind(with_mark, [*self._prompt, *reply.tokens])
        with_mark.close()
        self.redo = last
        return True

    def rest(self) -> str:
        """The text still held back when the reply ends."""
        return self._reply.text[self._shown :]

    def close(self) -> None:
        """Free the sampler checkpoints."""
        if self._mark is not None:
            self._mark.close()
            self._mark = None
        self._reply.close()
