"""The chat the user had open last, remembered across restarts in ``<data_dir>/last-chat.json``.

The file is small JSON written atomically. It is only a hint: a missing or garbled file, or a chat
deleted since, reads as "nothing to resume", never as an error. Which card owns the recorded chat now is
the library's to say (`rpchat.chat.library.last_chat`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rpchat.atomic import write_atomic
from rpchat.paths import Paths, profile

STATE_FILE = "last-chat.json"
_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class LastChat:
    """A chat file and the card it was opened with."""

    card: Path
    chat: Path


def _state_path(paths: Paths | None) -> Path:
    return (paths or profile()).data_dir / STATE_FILE


def remember_chat(card: Path, chat: Path, paths: Paths | None = None) -> None:
    """Record ``chat`` (opened with ``card``) as the one to resume; a failed write is not an error."""
    record = {"card": str(Path(card).absolute()), "chat": str(Path(chat).absolute())}
    try:
        write_atomic(_state_path(paths), json.dumps(record, ensure_ascii=False).encode("utf-8"))
    except OSError:
        pass  # resuming is a convenience; it must never stop a chat from opening


def recorded_chat(paths: Paths | None = None) -> LastChat | None:
    """What was recorded last, whether or not it still exists; None for a missing or garbled file."""
    try:
        with _state_path(paths).open("rb") as f:
            data = json.loads(f.read(_MAX_BYTES + 1)[:_MAX_BYTES].decode("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    card, chat = data.get("card"), data.get("chat")
    if not isinstance(card, str) or not isinstance(chat, str) or not card or not chat or "\0" in card + chat:
        return None
    return LastChat(Path(card), Path(chat))


def follow_moves(moved: dict[Path, Path], card: Path, paths: Paths | None = None) -> None:
    """Keep the record pointing at the chat (and its card, now at ``card``) after `move_chats`."""
    found = recorded_chat(paths)
    if found is None:
        return
    for old, new in moved.items():
        if Path(old).absolute() == found.chat.absolute():
            remember_chat(card, new, paths)
            return
