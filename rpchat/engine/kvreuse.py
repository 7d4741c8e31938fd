"""Planning KV-cache reuse between two prompts: keep the common prefix, shift a surviving span.

When the prompt builder drops old turns to fit the context, the new prompt is the old one with a
span cut out of the middle. The tokens after the cut are still in the KV cache, only at later
positions: removing the cut span and shifting them down (``seq_rm`` + ``seq_add``) saves
re-evaluating them.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass

ANCHOR = 16  # tokens that must match to recognise the surviving span
MIN_SHIFT = 16  # below this, re-evaluating is as cheap as shifting
MAX_BACKOFF = 4  # the tokens just before the cut may tokenize differently; look back this far
MAX_CANDIDATES = 64  # places in the cache where the anchor occurs that are tried


@dataclass(frozen=True)
class ReusePlan:
    """Apply in order: drop cache[``keep``:``span_start``], move cache[``span_start``:``span_end``]
    down to position ``keep``, drop everything after. Then evaluate prompt[``reused``:]."""

    keep: int
    span_start: int = 0
    span_end: int = 0

    @property
    def shifted(self) -> int:
        return self.span_end - self.span_start

    @property
    def reused(self) -> int:
        return self.keep + self.shifted


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    # Compare in blocks first: prompts share thousands of tokens and this runs every turn.
    step = 256
    while i + step <= n and a[i : i + step] == b[i : i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


def plan_reuse(cache: Sequence[int], prompt: Sequence[int], *, can_shift: bool) -> ReusePlan:
    """How much of ``cache`` serves ``prompt``; at least one prompt token is always left to evaluate."""
    limit = len(prompt) - 1  # the last prompt token must be evaluated to get logits
    keep = min(common_prefix(cache, prompt), limit)
    if not can_shift or keep >= len(cache) or keep >= limit:
        return ReusePlan(keep)
    cache_bytes = array("i", cache).tobytes()
    for back in range(min(MAX_BACKOFF, keep) + 1):
        start = keep - back
        anchor = prompt[start : start + ANCHOR]
        if len(anchor) < ANCHOR:
            break
        # The anchor may occur more than once (a chat repeats a line, a header and a short message): the
        # occurrence that serves the longest run wins, not the first one found.
        needle = array("i", anchor).tobytes()
        best_q, best_m = -1, 0
        q = _find(cache_bytes, needle, start + 1)
        for _ in range(MAX_CANDIDATES):
            if q < 0:
                break
            m = common_prefix(cache[q:], prompt[start:limit])
            if m > best_m:
                best_q, best_m = q, m
            q = _find(cache_bytes, needle, q + 1)
        if best_m >= MIN_SHIFT:
            return ReusePlan(start, best_q, best_q + best_m)
    return ReusePlan(keep)


def _find(haystack: bytes, needle: bytes, start_item: int) -> int:
    item = 4
    pos = haystack.find(needle, start_item * item)
    while pos >= 0 and pos % item:
        pos = haystack.find(needle, pos + 1)
    return pos // item if pos >= 0 else -1
