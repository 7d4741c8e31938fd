"""The sampler chain: `Sampling` settings turned into a llama.cpp sampler chain for one request.

Order (llama.cpp's default, as SillyTavern sends it): penalties, DRY, top-k, TFS, typical-p, top-p,
min-p, XTC, temperature, then the pick (dist with the seed). Mirostat replaces everything after DRY
with temperature + mirostat; temperature 0 means greedy. ``temperature_last=False`` moves temperature
to the front of the truncation samplers.

The repetition penalty and DRY look at the chat history, not only the reply: the last N prompt
tokens are fed to those two samplers (and only those: mirostat and the others keep no history)
before the first token is sampled. Tail-free sampling (dropped by llama.cpp) and the penalties (slow
on big vocabularies in llama.cpp) are numpy samplers from `rpchat.engine.custom_samplers`.
"""

from __future__ import annotations

import contextlib
import ctypes
import secrets
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import llama_cpp as L
import numpy as np

from rpchat.engine.base import Sampling
from rpchat.engine.custom_samplers import TOKEN_DATA, PenaltySampler, PySampler, TailFreeSampler, token_view
from rpchat.errors import EngineError

if TYPE_CHECKING:
    from typing_extensions import Self

RANDOM_SEED = L.LLAMA_DEFAULT_SEED  # llama.cpp's "pick a random seed" marker; never pass it on
# Samplers whose state is not a function of the accepted tokens: their RNG (and mirostat's mu)
# advance in apply, so a rewind restores copies of them instead of replaying history.
_DRAWING = frozenset({"dist", "xtc", "mirostat", "mirostat-v2"})


class ChainCheckpoint:
    """Copies of a chain's drawing samplers at one moment (see `SamplerChain.checkpoint`)."""

    def __init__(self, copies: list[tuple[int, Any]]) -> None:
        self.copies = copies  # (index in the chain, a clone llama.cpp allocated)

    def close(self) -> None:
        copies, self.copies = self.copies, []
        for _i, smpl in copies:
            if L is not None and L.llama_sampler_free is not None:
                L.llama_sampler_free(smpl)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


@dataclass(frozen=True)
class Candidates:
    """What a chain left after applying it to logits: candidates in chain order, and the pick."""

    ids: np.ndarray
    logits: np.ndarray
    probs: np.ndarray
    selected: int  # token id, or -1 when the chain selected nothing


def _pointer(obj: Any, *attrs: str) -> Any:
    """A raw llama.cpp pointer from a pointer, an _internals wrapper or a `llama_cpp.Llama`."""
    for attr in attrs:
        if obj is not None and hasattr(obj, attr):
            obj = getattr(obj, attr)
    return obj


# Building a DRY sampler scans the whole vocabulary for the sequence breakers (80 ms for Gemma's
# 262k tokens), so a few unprimed prototypes are kept and cloned (0.2 ms) for each request.
_DRY_PROTOTYPES: OrderedDict[tuple[object, ...], Any] = OrderedDict()
_DRY_LOCK = threading.Lock()
_DRY_KEEP = 4


def _vocab_fingerprint(vocab: Any, n_vocab: int) -> tuple[object, ...]:
    """Identifies a vocabulary even if a later model's vocab lands at a freed one's address."""
    ids = sorted({0, 1, 2, n_vocab - 1, *range(0, n_vocab, max(n_vocab // 29, 1))})
    return (ctypes.cast(vocab, ctypes.c_void_p).value, n_vocab,
            tuple(L.llama_vocab_get_text(vocab, i) for i in ids if i < n_vocab))


def _new_dry(vocab: Any, n_vocab: int, s: Sampling, last_n: int) -> Any:
    key = (_vocab_fingerprint(vocab, n_vocab), s.dry_multiplier, s.dry_base, s.dry_allowed_length,
           last_n, s.dry_sequence_breakers)
    with _DRY_LOCK:
        proto = _DRY_PROTOTYPES.get(key)
        if proto is None:
            breakers = [b.encode("utf-8") for b in s.dry_sequence_breakers if b]
            arr = (ctypes.c_char_p * max(len(breakers), 1))(*breakers)
            proto = L.llama_sampler_init_dry(
                vocab, s.dry_multiplier, s.dry_base, s.dry_allowed_length, last_n, arr, len(breakers)
            )
            if not proto:
                return proto
            _DRY_PROTOTYPES[key] = proto
            while len(_DRY_PROTOTYPES) > _DRY_KEEP:
                L.llama_sampler_free(_DRY_PROTOTYPES.popitem(last=False)[1])
        _DRY_PROTOTYPES.move_to_end(key)
        return L.llama_sampler_clone(proto)


class SamplerChain:
    """A llama.cpp sampler chain for one request, primed with the chat history for penalties."""

    def __init__(
        self,
        model: Any,
        ctx: Any,
        sampling: Sampling,
        history: Sequence[int] = (),
        *,
        n_vocab: int | None = None,
    ) -> None:
        """``model``/``ctx``: llama.cpp pointers, their wrappers or a Llama; ``history``: prompt tokens.

        Without a model (tests on plain logits) pass ``n_vocab``; DRY then is unavailable.
        """
        self.sampling = sampling
        seed = sampling.seed  # None or -1: a new random seed per request
        # llama.cpp seeds are uint32 and 0xFFFFFFFF means "random", so fold bigger seeds below it
        self.seed = seed % RANDOM_SEED if seed is not None and seed >= 0 else secrets.randbelow(RANDOM_SEED)
        self.names: list[str] = []
        self._chain: Any = None
        self._py: list[PySampler] = []  # numpy samplers in the chain; they must outlive it
        self._penalty: tuple[PenaltySampler, int] | None = None
        model_p = _pointer(model, "_model", "model")
        self._ctx = _pointer(ctx, "_ctx", "ctx")
        vocab = L.llama_model_get_vocab(model_p) if model_p else None
        if vocab:
            n_vocab = L.llama_vocab_n_tokens(vocab)
        if not n_vocab:
            raise EngineError("sampler chain needs a model or n_vocab")
        self.n_vocab = int(n_vocab)
        n_ctx = L.llama_n_ctx(self._ctx) if self._ctx else len(history) + sampling.max_tokens + 1

        params = L.llama_sampler_chain_default_params()
        params.no_perf = True
        self._chain = L.llama_sampler_chain_init(params)
        s = sampling
        primed: list[tuple[Any, int]] = []

        def window(last_n: int) -> int:
            return n_ctx if last_n < 0 else last_n

        penalty_n = window(s.repeat_last_n)
        if penalty_n > 0 and (s.repeat_penalty != 1.0 or s.frequency_penalty or s.presence_penalty):
            # llama.cpp's arithmetic in numpy: it touches the window's tokens, not all candidates
            pen = PenaltySampler(
                self.n_vocab, penalty_n, s.repeat_penalty, s.frequency_penalty, s.presence_penalty
            )
            self._py.append(pen)
            self._add("penalties", pen.sampler)
            pen.extend(history[-penalty_n:])
            self._penalty = (pen, penalty_n)
        dry_n = window(s.dry_penalty_last_n)
        if s.dry_multiplier > 0 and dry_n > 0:
            if not vocab:
                raise EngineError("DRY needs the model's vocabulary")
            dry = self._add("dry", _new_dry(vocab, self.n_vocab, s, dry_n))
            primed.append((dry, dry_n))

        if s.temperature <= 0:
            self._add("greedy", L.llama_sampler_init_greedy())
        elif s.mirostat in (1, 2):
            self._add_temperature()
            if s.mirostat == 1:
                self._add(
                    "mirostat",
                    L.llama_sampler_init_mirostat(
                        self.n_vocab, self.seed, s.mirostat_tau, s.mirostat_eta, 100
                    ),
                )
            else:
                self._add(
                    "mirostat-v2", L.llama_sampler_init_mirostat_v2(self.seed, s.mirostat_tau, s.mirostat_eta)
                )
        else:
            if not s.temperature_last:
                self._add_temperature()
            if s.top_k > 0:
                self._add("top-k", L.llama_sampler_init_top_k(s.top_k))
            if s.tfs_z < 1.0:
                tfs = TailFreeSampler(s.tfs_z)
                self._py.append(tfs)
                self._add("tail-free", tfs.sampler)
            if s.typical_p < 1.0:
                self._add("typical", L.llama_sampler_init_typical(s.typical_p, 1))
            if s.top_p < 1.0:
                self._add("top-p", L.llama_sampler_init_top_p(s.top_p, 1))
            if s.min_p > 0.0:
                self._add("min-p", L.llama_sampler_init_min_p(s.min_p, 1))
            if s.xtc_probability > 0.0:
                self._add("xtc", L.llama_sampler_init_xtc(s.xtc_probability, s.xtc_threshold, 1, self.seed))
            if s.temperature_last:
                self._add_temperature()
            self._add("dist", L.llama_sampler_init_dist(self.seed))

        # Prime DRY with the tail of the chat history (prompt tokens), as the penalties above: the
        # seeds' range means the last N tokens of context, not of the reply.
        self._primed = primed
        for sampler, last_n in primed:
            for token in history[-last_n:]:
                L.llama_sampler_accept(sampler, int(token))

    def _add(self, name: str, sampler: Any) -> Any:
        if not sampler:
            raise EngineError(f"llama.cpp could not create the {name} sampler")
        L.llama_sampler_chain_add(self._chain, sampler)  # the chain owns it from here
        self.names.append(name)
        return sampler

    def _add_temperature(self) -> None:
        s = self.sampling
        if s.dynatemp_range > 0:
            self._add(
                "temp-ext",
                L.llama_sampler_init_temp_ext(s.temperature, s.dynatemp_range, s.dynatemp_exponent),
            )
        elif s.temperature != 1.0:
            self._add("temp", L.llama_sampler_init_temp(s.temperature))

    def sample(self, ctx: Any = None, idx: int = -1) -> int:
        """Pick the next token from output ``idx`` of the last decode, and accept it."""
        if self._chain is None:
            raise EngineError("sampler chain is closed")
        ctx_p = _pointer(ctx, "_ctx", "ctx") if ctx is not None else self._ctx
        return int(L.llama_sampler_sample(self._chain, ctx_p, idx))

    def accept(self, token: int) -> None:
        """Record a token chosen outside `sample` (penalties and DRY see it)."""
        if self._chain is not None:
            L.llama_sampler_accept(self._chain, int(token))

    def checkpoint(self) -> ChainCheckpoint:
        """The drawing samplers' state now (RNG, mirostat's mu), for `rewind` to return to."""
        if self._chain is None:
            raise EngineError("sampler chain is closed")
        get, clone = L.llama_sampler_chain_get, L.llama_sampler_clone
        return ChainCheckpoint(
            [(i, clone(get(self._chain, i))) for i, name in enumerate(self.names) if name in _DRAWING]
        )

    def rewind(self, checkpoint: ChainCheckpoint, history: Sequence[int]) -> None:
        """Put the chain back as it was at ``checkpoint``, with ``history`` accepted so far.

        The penalties and DRY hold only the last N accepted tokens, so they are primed again from
        ``history`` (prompt + the reply tokens kept); the drawing samplers are swapped for copies
        of the checkpoint's, which stays usable for another rewind to the same place.
        """
        if self._chain is None:
            raise EngineError("sampler chain is closed")
        if self._penalty is not None:
            pen, last_n = self._penalty
            pen.reset()
            pen.extend(history[-last_n:])
        for sampler, last_n in self._primed:
            L.llama_sampler_reset(sampler)
            for token in history[-last_n:]:
                L.llama_sampler_accept(sampler, int(token))
        if not checkpoint.copies:
            return
        first, n = checkpoint.copies[0][0], len(self.names)
        # llama.cpp chains only append, so the tail from the first drawing sampler is taken out
        # and put back in order, each drawing sampler replaced by a copy of its checkpoint.
        tail = [L.llama_sampler_chain_remove(self._chain, i) for i in range(n - 1, first - 1, -1)][::-1]
        copies = dict(checkpoint.copies)
        for i, smpl in zip(range(first, n), tail, strict=True):
            if i in copies:
                L.llama_sampler_free(smpl)
                smpl = L.llama_sampler_clone(copies[i])
            L.llama_sampler_chain_add(self._chain, smpl)

    def apply(self, logits: np.ndarray) -> Candidates:
        """Run the chain over one row of logits (ids = positions) without accepting the pick."""
        if self._chain is None:
            raise EngineError("sampler chain is closed")
        logits = np.asarray(logits, dtype=np.float32).ravel()
        buf = (L.llama_token_data * logits.shape[0])()
        data = np.frombuffer(memoryview(buf), TOKEN_DATA)
        data["id"] = np.arange(logits.shape[0], dtype=np.int32)
        data["logit"] = logits
        cur_p = L.llama_token_data_array(data=buf, size=logits.shape[0], selected=-1, sorted=False)
        L.llama_sampler_apply(self._chain, ctypes.byref(cur_p))
        out = token_view(cur_p).copy()  # the chain may have moved cur_p.data; read through it
        selected = int(out["id"][cur_p.selected]) if 0 <= cur_p.selected < out.shape[0] else -1
        return Candidates(out["id"], out["logit"], out["p"], selected)

    @property
    def error(self) -> str | None:
        """A failure inside a numpy sampler (which then let the candidates through unchanged)."""
        return next((py.error for py in self._py if py.error), None)

    def close(self) -> None:
        """Free the chain and every sampler in it; safe to call twice."""
        chain, self._chain = self._chain, None
        if chain is not None and L is not None and L.llama_sampler_free is not None:
            L.llama_sampler_free(chain)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown may have torn down ctypes
            self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
