"""Making untrusted text (cards, chats, model output) inert for a terminal.

Control characters become visible symbols instead of acting: ESC shows as ``␛`` so ``\\x1b[2J`` prints
as ``␛[2J`` and clears nothing; bidi overrides show as ``\ufffd`` so they cannot reorder a line.
"""

from __future__ import annotations

import re

# C0 controls except \t and \n, plus DEL -> the Unicode "control pictures" block.
_C0 = {c: chr(0x2400 + c) for c in range(0x20) if c not in (0x09, 0x0A)}
_C0[0x7F] = "\u2421"
_C0[0x0D] = ""  # a bare carriage return would move the cursor; \r\n is just a newline
# C1 controls and the bidi embedding/override/isolate characters.
_OTHER = {c: "\ufffd" for c in range(0x80, 0xA0)}
_OTHER.update({c: "\ufffd" for c in (0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069)})
_TABLE = str.maketrans({**_C0, **_OTHER})
_NEEDS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def strip_controls(text: str) -> str:
    """Return ``text`` with every terminal control character replaced by an inert visible symbol."""
    if _NEEDS.search(text) is None:
        return text
    return text.translate(_TABLE)
