"""The KV cache's token list: exactly the tokens llama.cpp holds for sequence 0, positions 0..n-1.

Every change to the memory goes through here, so the list and the memory never disagree: reuse
between prompts (keep the common prefix, shift a surviving span), cuts for a rewind, and a resync
with the memory's own idea of what it holds after a decode failed or was aborted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rpchat.engine.kvreuse import ReusePlan, plan_reuse


class KVCache:
    """One llama.cpp context's memory and the tokens in it.

    ``tokens`` is only ever changed in place, so the per-token loop may bind ``tokens.append`` once.
    """

    def __init__(self, llama_cpp: Any, ctx: Any, *, can_shift: bool) -> None:
        self._l = llama_cpp
        self.ctx = ctx
        self.can_shift = can_shift  # the memory supports moving cells (seq_add)
        self.tokens: list[int] = []
        self._mem = llama_cpp.llama_get_memory(ctx)

    def plan(self, prompt: Sequence[int], *, shift: bool) -> ReusePlan:
        """How much of the cache serves ``prompt`` (``shift``: a context shift is allowed)."""
        return plan_reuse(self.tokens, prompt, can_shift=self.can_shift and shift)

    def reuse(self, prompt: list[int], *, shift: bool) -> ReusePlan:
        """Bring the memory to hold the part of ``prompt`` it can serve; the rest is to be evaluated."""
        L, mem = self._l, self._mem
        seq_rm = L.llama_memory_seq_rm
        plan = self.plan(prompt, shift=shift)
        if plan.shifted:
            ok = seq_rm(mem, 0, plan.span_end, -1) and seq_rm(mem, 0, plan.keep, plan.span_start)
            if ok:
                L.llama_memory_seq_add(mem, 0, plan.span_start, plan.span_end, plan.keep - plan.span_start)
        else:
            ok = seq_rm(mem, 0, plan.keep, -1)
        if ok:
            self.tokens[:] = prompt[: plan.reused]
        else:  # e.g. recurrent state that cannot be cut: start over
            self.clear()
        return plan

    def truncate(self, keep: int) -> bool:
        """Drop every token from position ``keep`` on; False (nothing changed) when the memory cannot be cut."""
        if not self._l.llama_memory_seq_rm(self._mem, 0, keep, -1):
            return False
        del self.tokens[keep:]
        return True

    def resync(self, tokens: Sequence[int]) -> None:
        """After an aborted or failed decode of ``tokens``, trust the memory's own idea of what it holds."""
        L, mem = self._l, self._mem
        n = int(L.llama_memory_seq_pos_max(mem, 0)) + 1
        n = max(0, min(n, len(tokens)))
        L.llama_memory_seq_rm(mem, 0, n, -1)
        self.tokens[:] = tokens[:n]

    def clear(self) -> None:
        """Forget everything (the next prompt is evaluated in full)."""
        self._l.llama_memory_clear(self._mem, True)
        self.tokens.clear()

    def replace(self, tokens: Sequence[int]) -> None:
        """The memory was set from outside (a saved state read back) and now holds ``tokens``."""
        self.tokens[:] = tokens


__all__ = ["KVCache"]
