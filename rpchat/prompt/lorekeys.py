"""Lorebook key matching: plain keys (case, whole words) and regex keys, compiled once and cached.

Regex keys come from strangers' cards, so patterns that can backtrack without bound (a repeat
inside a repeat, an ambiguous alternation inside a repeat, backreferences, more than one unbounded
repeat) are refused: such a key never matches instead of hanging the app. The scan text itself is
capped by the caller.
"""

from __future__ import annotations

import re
import sys
from typing import Any

if sys.version_info >= (3, 11):
    from re import _constants as sre_c
    from re import _parser as sre_parse
else:  # the same modules before 3.11 (deprecated names since)
    import sre_constants as sre_c
    import sre_parse

MAX_PATTERN_CHARS = 500
_SLASHED = re.compile(r"^/([\s\S]+?)/([gimsuyd]*)$")
_REPEATS = {sre_c.MAX_REPEAT, sre_c.MIN_REPEAT} | ({sre_c.POSSESSIVE_REPEAT} if hasattr(sre_c, "POSSESSIVE_REPEAT") else set())


def _unsafe(parsed: Any, in_repeat: bool = False) -> bool:
    """True when the parsed pattern can backtrack exponentially."""
    for op, av in parsed:
        if op in _REPEATS:
            _low, high, sub = av
            unbounded = high == sre_c.MAXREPEAT or high > 50
            if unbounded and in_repeat:
                return True
            if _unsafe(sub, in_repeat or unbounded):
                return True
        elif op == sre_c.SUBPATTERN:
            if _unsafe(av[-1], in_repeat):
                return True
        elif op == sre_c.BRANCH:
            branches = av[1]
            if in_repeat and not _distinct_starts(branches):
                return True
            if any(_unsafe(b, in_repeat) for b in branches):
                return True
        elif op in (sre_c.ASSERT, sre_c.ASSERT_NOT):
            if _unsafe(av[1], in_repeat):
                return True
        elif op in (sre_c.GROUPREF, sre_c.GROUPREF_EXISTS):
            return True  # backreferences can take exponential time
        elif op == getattr(sre_c, "ATOMIC_GROUP", None) and _unsafe(av, in_repeat):
            return True
    return False


def _distinct_starts(branches: list[Any]) -> bool:
    # "(cat|dog)+" is safe: each alternative starts with its own literal character.
    starts = []
    for b in branches:
        items = list(b)
        if not items or items[0][0] != sre_c.LITERAL:
            return False
        starts.append(items[0][1])
    return len(set(starts)) == len(starts)


def _unbounded_repeats(parsed: Any) -> int:
    total = 0
    for op, av in parsed:
        if op in _REPEATS:
            total += (av[1] == sre_c.MAXREPEAT or av[1] > 50) + _unbounded_repeats(av[2])
        elif op == sre_c.SUBPATTERN:
            total += _unbounded_repeats(av[-1])
        elif op == sre_c.BRANCH:
            total += sum(_unbounded_repeats(b) for b in av[1])
        elif op in (sre_c.ASSERT, sre_c.ASSERT_NOT):
            total += _unbounded_repeats(av[1])
    return total


def compile_regex(pattern: str, flags: int = 0) -> re.Pattern[str] | None:
    """Compile a key pattern (JavaScript-style named groups accepted); None if invalid or unsafe."""
    if len(pattern) > MAX_PATTERN_CHARS:
        return None
    pattern = re.sub(r"\(\?<(?=[A-Za-z_])", "(?P<", pattern)
    try:
        parsed = sre_parse.parse(pattern, flags)
        if _unsafe(parsed) or _unbounded_repeats(parsed) > 1:
            return None
        return re.compile(pattern, flags)
    except (re.error, RecursionError, OverflowError, ValueError, TypeError):
        return None


def slashed_regex(key: str) -> re.Pattern[str] | None:
    """A SillyTavern ``/pattern/flags`` key as a compiled regex, or None when the key is not one."""
    m = _SLASHED.match(key)
    if not m:
        return None
    flags = 0
    for ch in m.group(2):
        flags |= {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}.get(ch, 0)
    return compile_regex(m.group(1), flags)


class KeyMatcher:
    """Matches keys against scan text; compiled patterns are cached for one activation."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, bool, bool, bool], re.Pattern[str] | None] = {}
        self._lowered: tuple[str, str] = ("", "")

    def matches(self, text: str, key: str, *, case_sensitive: bool, whole_words: bool, regex: bool) -> bool:
        """True when ``key`` occurs in ``text`` under the entry's rules."""
        plain = not regex and not _SLASHED.match(key) and not (whole_words and len(key.split()) == 1)
        if plain:
            # Most keys are plain words: a substring test (lower-cased, as SillyTavern does) is fastest.
            if case_sensitive:
                return key in text
            if self._lowered[0] is not text:
                self._lowered = (text, text.lower())
            return key.lower() in self._lowered[1]
        cache_key = (key, case_sensitive, whole_words, regex)
        if cache_key not in self._cache:
            self._cache[cache_key] = self._compile(key, case_sensitive, whole_words, regex)
        pattern = self._cache[cache_key]
        return pattern is not None and pattern.search(text) is not None

    @staticmethod
    def _compile(key: str, case_sensitive: bool, whole_words: bool, regex: bool) -> re.Pattern[str] | None:
        # "/pattern/flags" is always a regex (as in SillyTavern); its flags decide the case.
        if _SLASHED.match(key):
            return slashed_regex(key)
        flags = 0 if case_sensitive else re.IGNORECASE
        if regex:
            return compile_regex(key, flags)
        # Whole words, SillyTavern's way: the key between non-word characters or the text's ends.
        return re.compile(r"(?:^|\W)" + re.escape(key) + r"(?:$|\W)", flags)
