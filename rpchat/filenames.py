"""File names made from untrusted text (card and character names, chat and lorebook titles).

One rule for every file and folder rpchat names, so a card's file, its chats folder and an imported chat
agree on the same name: a single path part that is safe on every OS and cannot leave its folder.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from rpchat.errors import RpchatError

MAX_STEM = 80  # characters
MAX_STEM_BYTES = 200  # UTF-8 bytes: most file systems allow 255 per name, and a suffix like " (12).jsonl" follows
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul"} | {f"{p}{i}" for p in ("com", "lpt") for i in range(1, 10)}
_UNSAFE = re.compile(r'[/\\:*?"<>|]')
# Control, format (bidi overrides, zero-width), surrogate, private-use, unassigned and separator characters.
_NEVER = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
_MAX_TRIES = 10_000


def safe_name(name: str, default: str = "unnamed") -> str:
    """A file stem or folder name made from ``name``: one path part, never hidden or reserved, at most
    `MAX_STEM` characters and `MAX_STEM_BYTES` bytes; ``default`` when nothing usable is left."""
    text = unicodedata.normalize("NFC", name)
    text = "".join("_" if unicodedata.category(c) in _NEVER else c for c in text)
    text = _UNSAFE.sub("_", text)
    text = " ".join(text.split()).strip(" .")  # no "..", no hidden files, no trailing dots (Windows drops them)
    text = text[:MAX_STEM].rstrip(" .")
    while len(text.encode("utf-8")) > MAX_STEM_BYTES:
        text = text[:-1].rstrip(" .")
    if not text or set(text) <= {"_"}:
        return default
    if text.split(".")[0].lower() in _WINDOWS_RESERVED:
        text = "_" + text
    return text


def unique_path(path: Path) -> Path:
    """``path``, or ``stem (2).suffix`` and so on when it is taken. A symlink counts as taken even when it
    points nowhere: writing through it would land outside the folder."""
    candidate, n = path, 2
    while candidate.exists() or candidate.is_symlink():
        if n > _MAX_TRIES:
            raise RpchatError("too many files with this name", path)
        candidate = path.with_name(f"{path.stem} ({n}){path.suffix}")
        n += 1
    return candidate
