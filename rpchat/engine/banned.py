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

import threading
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from functools import cache
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

from rpchat.engine.base import Result
from rpchat.engine.textstream import StopFilter, Utf8Pieces
from rpchat.errors import ConfigError, EngineError

if TYPE_CHECKING:
    from rpchat.engine.alternatives import LogitsCapture
    from rpchat.engine.llama import LocalEngine
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


def generate(
    engine: LocalEngine,
    llama_cpp: Any,
    sampler: SamplerChain,
    prompt: Sequence[int],
    max_new: int,
    stop: Sequence[str],
    cancel: threading.Event,
    result: Result,
    t0: float,
    capture: LogitsCapture | None = None,
) -> Iterator[str]:
    """`generation._generate` with banned phrases taken back; fills the same ``result`` fields."""
    from rpchat.engine.generation import _resync

    ctx = engine._ctx
    matcher = PhraseMatcher(sampler.sampling.banned_phrases)
    decode = llama_cpp.llama_decode
    buf = (llama_cpp.llama_token * 1)()
    batch = llama_cpp.llama_batch_get_one(buf, 1)
    logits_of = llama_cpp.llama_get_logits_ith
    pieces, piece_of = engine._pieces, engine._piece
    stops = StopFilter(stop)
    reply = _Reply()
    bans: dict[int, set[int]] = {}  # reply position -> tokens banned there
    exhausted: set[int] = set()  # positions where every candidate was banned
    shown = 0  # characters of reply.text released to the stream
    allowed = 0  # a phrase starting before this offset was let through (a cap was hit)
    t_first = 0.0
    finish = "length"

    def step(token: int) -> str | None:
        """Decode ``token`` into the KV cache; the finish reason when that fails."""
        buf[0] = token
        rc = decode(ctx, batch)
        if not rc:
            engine._cache.append(token)
            return None
        _resync(engine, llama_cpp, [*engine._cache, token])
        if rc == 2:
            return "cancelled"
        if rc == 1:
            return "length"  # no room left in the KV cache
        result.tokens_generated = len(reply.tokens)
        raise EngineError(
            f"llama.cpp failed while generating (llama_decode returned {rc})", engine.settings.model_path
        )

    try:
        while len(reply.tokens) < max_new:
            at = len(reply.tokens)
            banned_here = bans.get(at)
            if banned_here:
                logits = logits_of(ctx, -1)
                for tok in banned_here:
                    logits[tok] = BANNED_LOGIT
            mark = sampler.checkpoint()
            tok = sampler.sample(ctx, -1)
            if not t_first:
                t_first = perf_counter()
                result.ttft_s = t_first - t0
            entry = pieces.get(tok) or piece_of(tok)
            if entry[1]:
                mark.close()
                finish = "eos"
                break
            if banned_here and tok in banned_here:
                exhausted.add(at)  # every candidate is banned: this one stays
            reply.add(tok, entry[0], mark)
            if capture is not None:  # token alternatives, kept in step with reply.tokens
                capture.add(tok)
            hit = matcher.find(reply.folded, max(shown, allowed))
            if hit is not None:
                back = reply.token_at(hit[0])
                tried = bans.setdefault(back, set())
                keep = len(prompt) + back - 1  # the KV cache is cut one token short of `back`
                if (result.rewinds >= MAX_REWINDS or len(tried) >= MAX_BANS_AT or back in exhausted
                        or reply.marks[back] is None
                        or not llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), 0, keep, -1)):
                    allowed = hit[1]  # give up on this one gracefully (recurrent state cannot be cut)
                else:
                    tried.add(reply.tokens[back])
                    for later in [p for p in bans if p > back]:
                        del bans[later]
                    exhausted = {p for p in exhausted if p < back}
                    result.rewinds += 1
                    result.tokens_resampled += len(reply.tokens) - back
                    # The cache held the prompt and the reply before `tok`; the token before `back`
                    # is decoded again for the logits at `back`.
                    last = engine._cache[keep]
                    del engine._cache[keep:]
                    with_mark = reply.cut(back)
                    if capture is not None:
                        capture.cut(back)
                    sampler.rewind(with_mark, [*prompt, *reply.tokens])
                    with_mark.close()
                    failure = step(last)
                    if failure:
                        finish = failure
                        break
                    continue
            hold = reply.token_at(matcher.open_from(reply.folded, max(shown, allowed)))
            upto = reply.char_of(hold)
            if upto > shown:
                text, stopped = stops.feed(reply.text[shown:upto])
                shown = upto
                reply.release(hold)
                if text:
                    yield text
                if stopped:
                    finish = "stop"
                    break
            if cancel.is_set():
                finish = "cancelled"
                break
            failure = step(tok)
            if failure:
                finish = failure
                break
        if finish != "stop":
            text, stopped = stops.feed(reply.text[shown:])
            if stopped:
                finish = "stop"
            else:
                text += stops.flush()
            if text:
                yield text
    finally:
        reply.close()
    result.tokens_generated = len(reply.tokens)
    result.gen_time_s = perf_counter() - t_first if t_first else 0.0
    result.finish_reason = finish  # type: ignore[assignment]
