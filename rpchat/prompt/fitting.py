"""Context fitting: which older turns to leave out so the prompt fits, cut in cache-friendly chunks.

The cut is computed from the history alone (no state kept between calls). Turns are grouped into
chunks from the start of the chat, each worth about a quarter of the budget; the cut only ever
falls on a chunk boundary. Appending turns does not move earlier boundaries, so the same cut is
chosen turn after turn (the prompt start stays byte-identical and the engine's prefix cache keeps
working) until the prompt overflows again; then the next boundary drops a whole chunk at once,
bringing the prompt back to about 75% of the budget.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

CHUNK_RATIO = 0.25


def chunk_size(budget: int) -> int:
    """Tokens per dropped chunk: a quarter of the budget (at least one token)."""
    return max(1, int(budget * CHUNK_RATIO))


def chunk_boundaries(costs: Sequence[int], chunk: int) -> list[int]:
    """Turn indices where a chunk starts: 0, then each index where the previous chunk reached ``chunk``."""
    bounds = [0]
    acc = 0
    for i, cost in enumerate(costs):
        acc += cost
        if acc >= chunk:
            bounds.append(i + 1)
            acc = 0
    return bounds


def choose_cut(costs: Sequence[int], fixed: int, budget: int, *, keep_last: int = 2, chunk: int | None = None) -> int:
    """Index of the first turn to keep, so ``fixed + sum(costs[cut:]) <= budget`` when possible.

    ``costs`` are the token counts of the history turns, ``fixed`` the tokens that always stay
    (instruction, lore, the final header). The last ``keep_last`` turns are never dropped, even
    when the prompt then stays over budget.
    """
    n = len(costs)
    max_cut = max(0, n - keep_last)
    # suffix[c] = tokens of turns c..n-1
    suffix = [0] * (n + 1)
    for i in range(n - 1, -1, -1):
        suffix[i] = suffix[i + 1] + costs[i]
    if fixed + suffix[0] <= budget:
        return 0
    bounds = [b for b in chunk_boundaries(costs, chunk or chunk_size(budget)) if b <= max_cut]
    for b in bounds:
        if fixed + suffix[b] <= budget:
            return b
    # Even the last boundary is too much: cut as little as possible past it.
    for c in range(bounds[-1] + 1, max_cut + 1):
        if fixed + suffix[c] <= budget:
            return c
    return max_cut


class TokenCache:
    """A token counter that remembers counts by text across prompts, so a chat's messages are
    tokenized once rather than on every reply. Holds at most ``max_items`` texts (oldest go first)."""

    def __init__(self, counter: Callable[[str], int], max_items: int = 20_000) -> None:
        self._counter = counter
        self._max = max_items
        self._counts: OrderedDict[str, int] = OrderedDict()

    def __call__(self, text: str) -> int:
        if text in self._counts:
            self._counts.move_to_end(text)
            return self._counts[text]
        value = self._counter(text)
        self._counts[text] = value
        if len(self._counts) > self._max:
            self._counts.popitem(last=False)
        return value
