"""Chats: the Chat/Turn model, SillyTavern-format JSONL storage and the per-character library."""

from __future__ import annotations

from rpchat.chat.library import (
    ChatEntry,
    character_folder,
    chats_folder,
    export_st_chat,
    import_st_chat,
    latest_chat,
    list_chats,
    move_chats,
    new_chat_path,
    save_branch,
)
from rpchat.chat.model import Chat, Turn
from rpchat.chat.store import (
    ChatConflictError,
    ChatStore,
    dump_chat,
    keep_aside,
    load_chat,
    parse_chat,
    salvage_chat,
    save_chat,
    save_conflict_copy,
)

__all__ = [
    "Chat",
    "ChatConflictError",
    "ChatEntry",
    "ChatStore",
    "Turn",
    "character_folder",
    "chats_folder",
    "dump_chat",
    "export_st_chat",
    "import_st_chat",
    "keep_aside",
    "latest_chat",
    "list_chats",
    "load_chat",
    "move_chats",
    "new_chat_path",
    "parse_chat",
    "salvage_chat",
    "save_branch",
    "save_chat",
    "save_conflict_copy",
]
