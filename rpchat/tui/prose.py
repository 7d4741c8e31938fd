"""Roleplay prose as styled Rich `Text`: "dialogue", *actions*, _thoughts_, ''titles'' and OOC.

Card, chat and model text is data: it is never parsed as markup (a `Text` is built from the plain
string and styled by ranges) and terminal control characters are made inert first, so ``[bold red]``
and ``\\x1b[2J`` show as written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from rich.style import Style
from rich.text import Text

from rpchat.text import strip_controls

# Applied in this order; later layers win on color, so "dialogue" inside an *action* reads as dialogue
# while keeping the action's italics.
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("action", re.compile(r"(?<![\w*])\*(?![\s*])[^*\n]+?(?<![\s*])\*(?![\w*])")),
    ("thought", re.compile(r"(?<![\w_])_(?![\s_])[^_\n]+?(?<![\s_])_(?![\w_])")),
    ("title", re.compile(r"''(?!\s)[^'\n]+?''")),
    ("dialogue", re.compile(r"\"[^\"\n]+\"|\u201c[^\u201d\n]+\u201d")),
    ("ooc", re.compile(r"\(\(.+?\)\)|\(\s*OOC\s*:[^)\n]*\)?|\[\s*OOC\s*:[^\]\n]*\]?|^\s*OOC\s*:.*$",
                       re.IGNORECASE | re.MULTILINE)),
)

PROSE_KINDS = ("dialogue", "action", "thought", "title", "ooc")


def clean(text: str) -> str:
    """``text`` with control characters (ANSI escapes, bidi overrides, bare CR) made inert."""
    return strip_controls(text.replace("\r\n", "\n"))


def prose_text(text: str, styles: Mapping[str, Style] | None = None, base: Style | None = None) -> Text:
    """Style roleplay ``text`` by kind; ``styles`` maps kind -> Style (missing kinds stay plain)."""
    result = Text(clean(text), style=base or "", no_wrap=False, end="")
    if not styles:
        return result
    plain = result.plain
    for kind, pattern in _PATTERNS:
        style = styles.get(kind)
        if style is None:
            continue
        for m in pattern.finditer(plain):
            result.stylize(style, m.start(), m.end())
    return result


def prose_spans(text: str) -> list[tuple[str, str]]:
    """The (kind, matched text) runs ``prose_text`` would style, in document order (for tests/tools)."""
    plain = clean(text)
    found: list[tuple[int, str, str]] = []
    for kind, pattern in _PATTERNS:
        found += [(m.start(), kind, m.group(0)) for m in pattern.finditer(plain)]
    return [(kind, s) for _, kind, s in sorted(found)]
