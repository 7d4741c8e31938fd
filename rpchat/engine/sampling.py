"""The sampler chain: `Sampling` settings turned into a llama.cpp sampler chain, plus tail-free sampling.

Order (llama.cpp's default, as SillyTavern sends it): penalties, DRY, top-k, TFS, typical-p, top-p,
min-p, XTC, temperature, then the pick (dist with the seed). Mirostat replaces everything after DRY
with temperature + mirostat; temperature 0 means greedy. ``temperature_last=False`` moves temperature
to the front of the truncation samplers.

The repetition penalty and DRY look at the chat history, not only the reply: the last N prompt
tokens are fed to those two samplers (and only those: mirostat and the others keep no history)
before the first token is sampled. llama.cpp dropped tail-free sampling, so `TailFreeSampler`
implements it as a custom ``llama_sampler`` in numpy.
"""

from __future__ import annotations

import contextlib
import ctypes
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import llama_cpp as L
import numpy as np

from rpchat.engine.base import Sampling
from rpchat.errors import EngineError

if TYPE_CHECKING:
    from typing_extensions import Self

TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
RANDOM_SEED = L.LLAMA_DEFAULT_SEED  # llama.cpp's "pick a random seed" marker; never pass it on

# Tail-free sampling looks at tokens within this many nats of the top logit first, and widens the
# window only when the tokens left out could change the cut (see `tail_free_keep`).
TFS_FIRST_WINDOW = 10.0
TFS_TOLERANCE = 1e-3


def tail_free_keep(logits: np.ndarray, z: float, min_keep: int = 1) -> np.ndarray | None:
    """Indices (most likely first) of the tokens tail-free sampling keeps; None keeps all.

    The algorithm of llama.cpp's former ``llama_sampler_tail_free``: softmax, sort, take the absolute
    second differences of the sorted probabilities, normalise them, and cut where their running sum
    first exceeds ``z``. Sorting a 262k vocabulary per token is too slow, so only tokens within
    ``TFS_FIRST_WINDOW`` nats of the top are sorted. Every left-out token has probability below
    ``p_cut``, so together they shift the normalised running sum by less than ``6 * p_cut / s``;
    while that is under ``TFS_TOLERANCE`` the windowed cut is used (it can differ from the
    full-vocabulary cut only when the running sum lies that close to ``z``, closer than llama.cpp's
    own float32 sum resolved), otherwise the window widens, up to the full vocabulary.
    """
    n = logits.shape[0]
    if z >= 1.0 or n <= 2:
        return None
    top = float(logits.max())
    window = TFS_FIRST_WINDOW
    while True:
        cand = np.arange(n) if window == np.inf else np.flatnonzero(logits > top - window)
        full = cand.shape[0] == n
        order = cand[np.argsort(-logits[cand], kind="stable")]
        p = np.exp(logits[order].astype(np.float64) - top)
        total = p.sum()
        p /= total
        # the left-out tokens continue the curve just below the window's edge; repeating the last
        # probability twice stands for them (a cliff to zero would add a fake second derivative)
        d2 = np.abs(np.diff(np.concatenate((p, p[-1:], p[-1:])), 2))
        s = d2.sum()
        if full and n > 2:
            d2 = d2[: n - 2]  # the true algorithm has no derivatives past the last token
            s = d2.sum()
        cum = np.cumsum(d2)
        if s > 1e-6:
            over = np.flatnonzero(cum > z * s)
        else:  # flat distribution: uniform weights, as llama.cpp did
            over = np.flatnonzero(np.arange(1, d2.shape[0] + 1) / d2.shape[0] > z)
        over = over[over >= min_keep]
        last = int(over[0]) if over.shape[0] else order.shape[0]
        if full:
            return order[: max(last, min_keep)]
        p_cut = np.exp(-window) / total  # bound on any left-out token's probability
        if s > 1e-6 and 6.0 * p_cut / s < TFS_TOLERANCE and last < order.shape[0] - 2:
            return order[:last]
        window = window * 2 if window < 40 else np.inf


def token_view(cur_p: Any) -> np.ndarray:
    """A numpy view (no copy) of a ``llama_token_data_array``'s candidates."""
    addr = ctypes.cast(cur_p.data, ctypes.c_void_p).value
    size = int(cur_p.size)
    if not addr or size == 0:
        return np.empty(0, TOKEN_DATA)
    raw = (ctypes.c_char * (size * TOKEN_DATA.itemsize)).from_address(addr)
    return np.frombuffer(memoryview(raw), TOKEN_DATA)


_NAME_FN = ctypes.CFUNCTYPE(ctypes.c_void_p, L.llama_sampler_p_ctypes)


class _SamplerIface(ctypes.Structure):
    """``llama_sampler_i`` with ``name`` returning a raw pointer (a callback cannot return bytes)."""

    _fields_ = [("name", _NAME_FN), *L.llama_sampler_i._fields_[1:]]


class TailFreeSampler:
    """Tail-free sampling (Phillips 2019) as a custom llama.cpp sampler; owned by a chain once added."""

    def __init__(self, z: float, min_keep: int = 1) -> None:
        self.z = z
        self.min_keep = min_keep
        self.error: str | None = None
        self._label = ctypes.create_string_buffer(b"tail-free")
        iface = _SamplerIface()
        # keep every callback object alive as long as this object: llama.cpp only holds raw pointers
        self._name_cb = _NAME_FN(lambda _smpl: ctypes.addressof(self._label))
        self._apply_cb = L.llama_sampler_i_apply(self._apply)
        iface.name = self._name_cb
        iface.apply = self._apply_cb
        self._iface = iface
        # llama_sampler_init allocates in C, so a chain can free the sampler itself (ctx stays NULL)
        iface_p = ctypes.cast(ctypes.pointer(iface), ctypes.POINTER(L.llama_sampler_i))
        self.sampler = L.llama_sampler_init(iface_p, None)

    def _apply(self, _smpl: Any, cur_p_ptr: Any) -> None:
        # An exception must not cross into C: on error the candidates stay untouched (TFS off).
        try:
            cur_p = cur_p_ptr.contents
            data = token_view(cur_p)
            if data.shape[0] <= 2:
                return
            keep = tail_free_keep(np.ascontiguousarray(data["logit"]), self.z, self.min_keep)
            if keep is None:
                return
            data[: keep.shape[0]] = data[keep]
            cur_p.size = keep.shape[0]
            cur_p.sorted = True
        except Exception as e:  # noqa: BLE001 - reported through .error, never raised into C
            self.error = f"tail-free sampling failed: {e}"


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
        self.seed = sampling.seed if sampling.seed is not None else secrets.randbelow(RANDOM_SEED)
        self.names: list[str] = []
        self._chain: Any = None
        self._tfs: TailFreeSampler | None = None
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
            pen = self._add(
                "penalties",
                L.llama_sampler_init_penalties(
                    self.n_vocab, penalty_n, s.repeat_penalty, s.frequency_penalty, s.presence_penalty
                ),
            )
            primed.append((pen, penalty_n))
        dry_n = window(s.dry_penalty_last_n)
        if s.dry_multiplier > 0 and dry_n > 0:
            if not vocab:
                raise EngineError("DRY needs the model's vocabulary")
            breakers = [b.encode("utf-8") for b in s.dry_sequence_breakers if b]
            arr = (ctypes.c_char_p * max(len(breakers), 1))(*breakers)
            dry = self._add(
                "dry",
                L.llama_sampler_init_dry(
                    vocab, s.dry_multiplier, s.dry_base, s.dry_allowed_length, dry_n, arr, len(breakers)
                ),
            )
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
                self._tfs = TailFreeSampler(s.tfs_z)
                self._add("tail-free", self._tfs.sampler)
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

        # Prime penalties/DRY with the tail of the chat history (prompt tokens): the seeds' range
        # means the last N tokens of context, not of the reply.
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
        """A failure inside the Python tail-free sampler (it then lets all tokens through)."""
        return self._tfs.error if self._tfs is not None else None

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
