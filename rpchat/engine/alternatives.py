"""Token alternatives: for each token of a reply, its probability and the model's top choices there.

The probabilities are the model's own distribution: a softmax of the raw logits (temperature 1),
before the sampler chain. That is what llama-server's ``n_probs`` reports without
``post_sampling_probs``, so the local and the remote engine show the same kind of figure, and it
does not collapse to 100% under greedy sampling or a tight top-k. A token that a banned-phrase
rewind forbade at a position has probability 0 there.

The local engine reads the logits llama.cpp already holds after each decode (`LogitsCapture`):
the normaliser is one in-place exponential pass over the vocabulary, and the top k are found from
block maxima, so a 262k vocabulary costs two vectorised passes, not a partial sort (which takes about
2 ms, a tenth of a token's time on a small model).
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

TOP_K = 5  # alternatives kept per token
BLOCK = 512  # logits per block when looking for the top k (see `LogitsCapture._top`)


@dataclass(frozen=True)
class Alternative:
    """One candidate token at one position."""

    text: str
    prob: float
    token: int | None = None  # the id, when the engine says
    whole: bool = True  # False for part of a character split over tokens: cannot be chosen alone


@dataclass(frozen=True)
class TokenStep:
    """One generated token: the text it added, its probability and the top candidates there."""

    text: str  # a character split over tokens comes out whole with its last byte
    prob: float
    top: tuple[Alternative, ...]
    token: int | None = None


@dataclass(frozen=True)
class TokenTrace:
    """A reply token by token. ``base`` is text before the first traced token (the earlier part of
    a continued message), shown but not traced."""

    steps: tuple[TokenStep, ...] = ()
    base: str = ""

    @property
    def text(self) -> str:
        return self.base + self.generated

    @property
    def generated(self) -> str:
        """The traced tokens' text (after ``base``)."""
        return "".join(s.text for s in self.steps)

    @property
    def open_text(self) -> str:
        """The message as a chat stores it, before trailing space is trimmed (see `reply_text`)."""
        return self.base + self.generated if self.base else self.generated.lstrip()

    def continued(self, base: str, more: TokenTrace) -> TokenTrace:
        """The trace of message ``base`` continued by ``more``: this trace when it is the trace
        of ``base`` (cut to it), else ``base`` untraced."""
        shown = self.open_text
        if not shown.startswith(base) or shown[len(base):].strip():
            return replace(more, base=base)
        lead = 0 if self.base else len(self.generated) - len(self.generated.lstrip())
        return self.fit(self.generated[: lead + len(base) - len(self.base)]).then(more)

    def fit(self, text: str) -> TokenTrace:
        """The steps that produced ``text`` (what the engine returned after ``base``): tokens past
        a stop string are dropped and the one holding it is cut to what was kept."""
        kept: list[TokenStep] = []
        at = 0
        for step in self.steps:
            if at >= len(text):
                break
            piece = text[at : at + len(step.text)]
            kept.append(step if piece == step.text else replace(step, text=piece))
            at += len(step.text)
        return replace(self, steps=tuple(kept))

    def then(self, more: TokenTrace) -> TokenTrace:
        """This trace followed by ``more``'s steps (a continuation of the same message)."""
        return replace(self, steps=self.steps + more.steps)

    def choose(self, index: int, alt: Alternative) -> TokenTrace:
        """The trace up to step ``index`` with ``alt`` taken there instead."""
        step = self.steps[index]
        chosen = replace(step, text=alt.text, prob=alt.prob, token=alt.token)
        return replace(self, steps=(*self.steps[:index], chosen))


def reply_text(base: str, generated: str) -> str:
    """A reply as the chat stores it: a fresh one starts after "Name:", so the model's leading
    space is not part of it; trailing space is trimmed."""
    return ((base + generated) if base else generated.lstrip()).rstrip()


class RawStep(NamedTuple):
    """One token as an engine reports it: bytes, not text yet (see `trace_of`)."""

    token: int | None
    data: bytes
    prob: float
    top: tuple[tuple[int | None, bytes, float], ...]


def trace_of(raw: Sequence[RawStep]) -> TokenTrace:
    """Decode raw steps into text: UTF-8 across tokens as the stream decodes it."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    steps: list[TokenStep] = []
    for r in raw:
        boundary = not decoder.getstate()[0]  # no character is half-way here
        text = decoder.decode(r.data)
        top = tuple(_alternative(tok, data, prob, boundary) for tok, data, prob in r.top)
        steps.append(TokenStep(text, r.prob, top, r.token))
    return TokenTrace(tuple(steps))


def _alternative(token: int | None, data: bytes, prob: float, boundary: bool) -> Alternative:
    try:
        return Alternative(data.decode("utf-8"), prob, token, whole=boundary)
    except UnicodeDecodeError:
        return Alternative(data.decode("utf-8", "replace"), prob, token, whole=False)


@dataclass
class LogitsCapture:
    """The local engine's recorder: call `add` right after each token is sampled, while llama.cpp
    still holds that position's logits; `cut` follows a rewind; `trace` decodes at the end."""

    llama_cpp: Any
    ctx: Any
    n_vocab: int
    piece: Any  # token -> (bytes, is end of generation): the engine's cached piece lookup
    k: int = TOP_K
    _rows: list[tuple[int, float, Any, Any]] = field(default_factory=list)
    _weights: Any = None

    def add(self, token: int) -> None:
        import numpy as np

        ptr = self.llama_cpp.llama_get_logits_ith(self.ctx, -1)
        logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        if self._weights is None:
            self._weights = np.empty(self.n_vocab, dtype=np.float32)
        weights = self._weights
        best = logits.max()
        np.subtract(logits, best, out=weights)
        np.exp(weights, out=weights)  # the softmax numerators, in place: no allocation per token
        total = float(weights.sum())
        ids = self._top(np, logits)
        probs = weights[ids] / total
        order = np.argsort(-probs, kind="stable")
        self._rows.append((token, float(weights[token]) / total, ids[order], probs[order]))

    def _top(self, np: Any, logits: Any) -> Any:
        """Ids of the k largest logits, unordered. The vocabulary is laid out as rows of `BLOCK`: the k
        largest values lie in the k columns with the largest maxima, so only those columns are searched
        (a column maximum runs down contiguous rows, as fast as one pass over the logits)."""
        k, n = self.k, self.n_vocab
        whole = n - n % BLOCK
        if whole < BLOCK:
            return np.argpartition(logits, -k)[-k:]
        maxima = logits[:whole].reshape(-1, BLOCK).max(axis=0)
        columns = np.argpartition(maxima, -k)[-k:]
        ids = (columns[None, :] + np.arange(0, whole, BLOCK)[:, None]).ravel()
        if whole < n:
            ids = np.concatenate((ids, np.arange(whole, n)))
        return ids[np.argpartition(logits[ids], -k)[-k:]]

    def cut(self, n: int) -> None:
        """Forget the tokens from ``n`` on (a banned-phrase rewind took them back)."""
        del self._rows[n:]

    def __len__(self) -> int:
        return len(self._rows)

    def trace(self) -> TokenTrace:
        piece = self.piece
        raw = [
            RawStep(tok, piece(tok)[0], prob,
                    tuple((int(i), piece(int(i))[0], float(p)) for i, p in zip(ids, probs, strict=True)))
            for tok, prob, ids, probs in self._rows
        ]
        return trace_of(raw)


def llama_server_steps(entries: Any) -> list[RawStep]:
    """llama-server's ``completion_probabilities`` (``n_probs``, raw ``logprob`` form) as raw steps;
    anything malformed is skipped (a server's answer is untrusted data)."""
    if not isinstance(entries, list):
        return []
    out: list[RawStep] = []
    for entry in entries:
        parsed = _server_token(entry, "logprob")
        if parsed is None:
            continue
        top_raw = entry.get("top_logprobs")
        listed = top_raw if isinstance(top_raw, list) else []
        top = [t for t in (_server_token(e, "logprob") for e in listed) if t is not None]
        out.append(RawStep(*parsed, tuple(top[:TOP_K])))
    return out


def openai_steps(logprobs: Any) -> list[RawStep]:
    """A completions chunk's ``logprobs``: llama-server's (``content``, as `llama_server_steps`) or the
    OpenAI completions form (``tokens``, ``token_logprobs``, ``top_logprobs`` as text -> logprob), which
    has no token ids. Malformed parts are skipped."""
    if not isinstance(logprobs, dict):
        return []
    if "content" in logprobs:
        return llama_server_steps(logprobs["content"])
    tokens, values, tops = logprobs.get("tokens"), logprobs.get("token_logprobs"), logprobs.get("top_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list):
        return []
    tops = tops if isinstance(tops, list) else []
    out: list[RawStep] = []
    for i, (text, value) in enumerate(zip(tokens, values, strict=False)):
        chosen = _server_token({"token": text, "logprob": value}, "logprob")
        if chosen is None:
            continue
        top_map = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        top = [t for t in (_server_token({"token": k, "logprob": v}, "logprob") for k, v in top_map.items())
               if t is not None]
        top.sort(key=lambda t: -t[2])
        out.append(RawStep(*chosen, tuple(top[:TOP_K])))
    return out


def is_chosen(step: TokenStep, alt: Alternative) -> bool:
    """Whether ``alt`` is the token ``step`` took (by id when both have one, else by text)."""
    if step.token is not None and alt.token is not None:
        return alt.token == step.token
    return alt.text == step.text


def _server_token(entry: Any, key: str) -> tuple[int | None, bytes, float] | None:
    if not isinstance(entry, dict):
        return None
    data = entry.get("bytes")
    if isinstance(data, list) and all(isinstance(b, int) and 0 <= b < 256 for b in data):
        raw = bytes(data)
    elif isinstance(entry.get("token"), str):
        raw = entry["token"].encode("utf-8")
    else:
        return None
    value = entry.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        return None
    prob = min(1.0, math.exp(min(0.0, float(value))))
    token = entry.get("id")
    return (token if isinstance(token, int) and not isinstance(token, bool) else None), raw, prob
