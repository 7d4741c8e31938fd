"""Samplers llama.cpp lacks or runs slowly, written in numpy as custom ``llama_sampler`` objects.

- `TailFreeSampler`: tail-free sampling, which llama.cpp removed.
- `PenaltySampler`: llama.cpp's repetition/frequency/presence penalty with the same arithmetic, but
  it touches only the tokens in the window instead of hashing all 262k candidates (1.3 ms a token).

Each is created with ``llama_sampler_init`` (memory owned by llama.cpp, so a chain can free it) and
keeps its callbacks alive on the Python object, which must outlive the chain. Callbacks never raise
into C: a failure is stored in ``.error`` and the candidates pass through unchanged.
"""

from __future__ import annotations

import ctypes
from collections import deque
from collections.abc import Iterable
from typing import Any

import llama_cpp as L
import numpy as np

TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])

# Tail-free sampling looks at tokens within this many nats of the top logit first, and widens the
# window only when the tokens left out could change the cut (see `tail_free_keep`).
TFS_FIRST_WINDOW = 10.0
TFS_TOLERANCE = 1e-3

_NAME_FN = ctypes.CFUNCTYPE(ctypes.c_void_p, L.llama_sampler_p_ctypes)


class _SamplerIface(ctypes.Structure):
    """``llama_sampler_i`` with ``name`` returning a raw pointer (a callback cannot return bytes)."""

    _fields_ = [("name", _NAME_FN), *L.llama_sampler_i._fields_[1:]]


def token_view(cur_p: Any) -> np.ndarray:
    """A numpy view (no copy) of a ``llama_token_data_array``'s candidates."""
    addr = ctypes.cast(cur_p.data, ctypes.c_void_p).value
    size = int(cur_p.size)
    if not addr or size == 0:
        return np.empty(0, TOKEN_DATA)
    raw = (ctypes.c_char * (size * TOKEN_DATA.itemsize)).from_address(addr)
    return np.frombuffer(memoryview(raw), TOKEN_DATA)


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


class PySampler:
    """Base of the numpy samplers: builds the C sampler and routes its callbacks to Python."""

    label = b"py"

    def __init__(self) -> None:
        self.error: str | None = None
        self._label = ctypes.create_string_buffer(self.label)
        iface = _SamplerIface()
        # llama.cpp keeps raw pointers to these callbacks: they live as long as this object
        self._callbacks = [
            _NAME_FN(lambda _smpl: ctypes.addressof(self._label)),
            L.llama_sampler_i_apply(self._apply_safely),
            L.llama_sampler_i_accept(self._accept_safely),
            L.llama_sampler_i_reset(self._reset_safely),
        ]
        iface.name, iface.apply, iface.accept, iface.reset = self._callbacks
        self._iface = iface
        iface_p = ctypes.cast(ctypes.pointer(iface), ctypes.POINTER(L.llama_sampler_i))
        self.sampler = L.llama_sampler_init(iface_p, None)  # ctx NULL: no clone/free callbacks needed

    def _apply_safely(self, _smpl: Any, cur_p_ptr: Any) -> None:
        try:
            self.apply(cur_p_ptr.contents)
        except Exception as e:  # noqa: BLE001 - must not cross into C; reported through .error
            self.error = f"{self.label.decode()} sampler failed: {e}"

    def _accept_safely(self, _smpl: Any, token: int) -> None:
        try:
            self.accept(token)
        except Exception as e:  # noqa: BLE001 - as above
            self.error = f"{self.label.decode()} sampler failed: {e}"

    def _reset_safely(self, _smpl: Any) -> None:
        try:
            self.reset()
        except Exception as e:  # noqa: BLE001 - as above
            self.error = f"{self.label.decode()} sampler failed: {e}"

    def apply(self, cur_p: Any) -> None:
        """Filter or reweight the candidates of ``cur_p`` (a ``llama_token_data_array``) in place."""

    def accept(self, token: int) -> None:
        """Record a sampled token."""

    def reset(self) -> None:
        """Forget recorded tokens."""


class TailFreeSampler(PySampler):
    """Tail-free sampling (Phillips 2019): keeps tokens before the flat tail of the distribution."""

    label = b"tail-free"

    def __init__(self, z: float, min_keep: int = 1) -> None:
        self.z = z
        self.min_keep = min_keep
        super().__init__()

    def apply(self, cur_p: Any) -> None:
        data = token_view(cur_p)
        if data.shape[0] <= 2:
            return
        keep = tail_free_keep(np.ascontiguousarray(data["logit"]), self.z, self.min_keep)
        if keep is None:
            return
        data[: keep.shape[0]] = data[keep]
        cur_p.size = keep.shape[0]
        cur_p.sorted = True


class PenaltySampler(PySampler):
    """Repetition, frequency and presence penalties over the last ``last_n`` tokens, as llama.cpp does."""

    label = b"penalties"

    def __init__(self, n_vocab: int, last_n: int, repeat: float, frequency: float, presence: float) -> None:
        self.n_vocab = n_vocab
        self.repeat = np.float32(repeat)
        self.frequency = np.float32(frequency)
        self.presence = np.float32(presence)
        self._window: deque[int] = deque(maxlen=max(last_n, 1))
        self._counts: dict[int, int] = {}
        super().__init__()

    def extend(self, tokens: Iterable[int]) -> None:
        """Accept many tokens at once (the chat history before the reply)."""
        for token in tokens:
            self.accept(int(token))

    def accept(self, token: int) -> None:
        window, counts = self._window, self._counts
        if len(window) == window.maxlen:
            old = window[0]
            left = counts[old] - 1
            if left:
                counts[old] = left
            else:
                del counts[old]
        window.append(token)
        counts[token] = counts.get(token, 0) + 1

    def reset(self) -> None:
        self._window.clear()
        self._counts.clear()

    def apply(self, cur_p: Any) -> None:
        counts = self._counts
        if not counts:
            return
        data = token_view(cur_p)
        n = data.shape[0]
        ids = np.fromiter(counts.keys(), np.int32, len(counts))
        ids_in = data["id"]
        if n == self.n_vocab and not cur_p.sorted and ids_in[0] == 0 and ids_in[n - 1] == n - 1:
            pos: np.ndarray = ids  # straight from llama_sampler_sample: candidate i is token i
            hits = np.fromiter(counts.values(), np.float32, len(counts))
        else:
            lookup = np.zeros(max(self.n_vocab, int(ids.max()) + 1, int(ids_in.max()) + 1), np.float32)
            lookup[ids] = np.fromiter(counts.values(), np.float32, len(counts))
            hits = lookup[ids_in]
            pos = np.flatnonzero(hits)
            hits = hits[pos]
        logits = data["logit"]
        chosen = logits[pos]
        # same float32 arithmetic as llama.cpp: scale towards "less likely", then subtract
        chosen = np.where(chosen <= 0, chosen * self.repeat, chosen / self.repeat)
        chosen -= hits * self.frequency + self.presence
        logits[pos] = chosen
        cur_p.sorted = False
