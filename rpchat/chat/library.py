"""Where chats live: ``chats_dir/<character>/<Character - 2024-05-01@12h30m00s>.jsonl``, as in SillyTavern.

Names come from cards, which come from strangers, so every name is made safe before it
touches the file system: no separators, no ``..``, no control or bidi characters.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rpchat.chat.model import Chat
from rpchat.chat.store import ChatStore, load_chat
from rpchat.errors import ChatError
from rpchat.paths import profile

_MAX_NAME = 100
_PREVIEW = 200
# Copies rpchat keeps aside (see store.keep_aside / save_conflict_copy); not chats to list.
_ASIDE = re.compile(r"\.(corrupt|conflict)-\d{8}T\d{6}(-\d+)?\.jsonl$")
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)}


@dataclass(frozen=True)
class ChatEntry:
    """One chat file as the chat picker shows it; ``error`` is set when the file cannot be read."""

    path: Path
    turns: int
    last_date: str
    preview: str
    error: str | None = None


def safe_name(name: str) -> str:
    """A file or folder name made from untrusted text: one path part, never hidden or reserved."""
    kept = []
    for ch in unicodedata.normalize("NFC", name):
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            continue  # control, bidi overrides, surrogates: never in a file name
        kept.append("_" if ch in '/\\:*?"<>|' else ch)
    text = " ".join("".join(kept).split())
    text = text.strip(" .")  # no "..", no hidden files, no trailing dots (Windows drops them)
    text = text[:_MAX_NAME].rstrip(" .")
    if not text or text.split(".")[0].upper() in _WINDOWS_RESERVED:
        text = f"_{text}" if text else "unnamed"
    return text


def character_folder(character_name: str, root: Path | None = None) -> Path:
    """The folder holding one character's chats."""
    base = root if root is not None else profile().chats_dir
    return base / safe_name(character_name)


def unique_path(path: Path) -> Path:
    """``path``, or ``name (2).jsonl`` and so on when it is taken."""
    candidate, n = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.stem} ({n}){path.suffix}")
        n += 1
    return candidate


def new_chat_path(character_name: str, folder: Path | None = None) -> Path:
    """A free path for a new chat, named like SillyTavern: ``Name - 2024-05-01@12h30m00s.jsonl``."""
    folder = folder if folder is not None else character_folder(character_name)
    stamp = datetime.now().strftime("%Y-%m-%d@%Hh%Mm%Ss")
    return unique_path(folder / f"{safe_name(character_name)} - {stamp}.jsonl")


def _chat_files(character_name: str) -> list[Path]:
    folder = character_folder(character_name)
    if not folder.is_dir():
        return []
    files = [p for p in folder.glob("*.jsonl") if p.is_file() and not _ASIDE.search(p.name)]

    def key(p: Path) -> tuple[int, str]:
        try:
            return (p.stat().st_mtime_ns, p.name)
        except OSError:
            return (0, p.name)

    return sorted(files, key=key, reverse=True)


def list_chats(character_name: str) -> list[ChatEntry]:
    """The character's chats, most recently changed first; unreadable files carry ``error``."""
    entries = []
    for path in _chat_files(character_name):
        try:
            chat = load_chat(path)
        except ChatError as exc:
            entries.append(ChatEntry(path, 0, "", "", error=exc.problem))
            continue
        last = chat.turns[-1] if chat.turns else None
        preview = " ".join(last.text.split()) if last else ""
        if len(preview) > _PREVIEW:
            preview = preview[: _PREVIEW - 1] + "…"
        entries.append(
            ChatEntry(path, len(chat.turns), last.send_date if last else chat.create_date, preview)
        )
    return entries


def latest_chat(character_name: str) -> Path | None:
    """The character's most recently changed chat file, or None when there is none."""
    files = _chat_files(character_name)
    return files[0] if files else None


def save_branch(chat: Chat, upto: int, parent_path: Path) -> tuple[Chat, ChatStore]:
    """Branch ``chat`` after turn ``upto`` into a new file beside its parent; returns it and its store."""
    branch = chat.branch(upto)
    parent = branch.settings.get("parent")
    if isinstance(parent, dict):
        parent["file"] = parent_path.name
    # SillyTavern links a branch to its parent through main_chat (the file name without .jsonl).
    branch.metadata["main_chat"] = parent_path.stem
    stamp = datetime.now().strftime("%Y-%m-%d@%Hh%Mm%Ss")
    path = unique_path(parent_path.parent / f"Branch #{upto} - {stamp}.jsonl")
    store = ChatStore(path)
    store.save(branch)
    return branch, store
