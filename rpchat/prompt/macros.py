"""Card and persona macros: ``{{char}}``, ``{{user}}`` (any case), ``<BOT>`` and ``<USER>``."""

from __future__ import annotations

import re

_MACRO = re.compile(r"\{\{\s*(char|user)\s*\}\}|<(BOT|USER)>", re.IGNORECASE)


def normalize_newlines(text: str) -> str:
    """``\\r\\n`` and lone ``\\r`` become ``\\n``."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def expand_macros(text: str, char: str, user: str) -> str:
    """Replace the name macros in one pass, so a name that itself looks like a macro stays as is."""

    def name_for(m: re.Match[str]) -> str:
        word = (m.group(1) or m.group(2)).lower()
        return char if word in ("char", "bot") else user

    return _MACRO.sub(name_for, text)


def clean_text(text: str, char: str, user: str) -> str:
    """Newlines normalized, macros expanded, surrounding whitespace trimmed."""
    return expand_macros(normalize_newlines(text), char, user).strip()
