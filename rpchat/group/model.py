"""A group: several character cards sharing chats, kept as SillyTavern keeps it (``groups/<id>.json``).

Members are card file names (SillyTavern's avatar ids, e.g. ``Seraphina.png``); muted members are in
``disabled_members``. The group's chats live in ``group chats/<chat_id>.jsonl``. Keys rpchat does not
use are written back as they came, so SillyTavern loses nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rpchat.atomic import write_atomic
from rpchat.errors import ChatError
from rpchat.userfile import read_json_object

MAX_GROUP_BYTES = 4 * 1024 * 1024
# SillyTavern's group_activation_strategy values; rpchat calls LIST "round-robin".
STRATEGIES = {"natural": 0, "round-robin": 1, "manual": 2}
STRATEGY_NAMES = {v: k for k, v in STRATEGIES.items()}
# The keys rpchat reads; everything else in the file is kept verbatim in ``unknown``.
_KEYS = ("id", "name", "members", "disabled_members", "activation_strategy", "allow_self_responses", "chat_id",
         "chats", "chat_metadata", "past_metadata")


def chat_stamp() -> str:
    """A new chat's id as SillyTavern names it (``humanizedDateTime``): ``2024-05-01@12h30m00s``."""
    return datetime.now().strftime("%Y-%m-%d@%Hh%Mm%Ss")


@dataclass
class Group:
    """One group definition. ``strategy`` is SillyTavern's ``activation_strategy`` number."""

    id: str
    name: str
    members: list[str]
    disabled_members: list[str] = field(default_factory=list)
    strategy: int = 0
    allow_self_responses: bool = False
    chat_id: str = ""
    chats: list[str] = field(default_factory=list)
    chat_metadata: dict[str, Any] = field(default_factory=dict)
    past_metadata: dict[str, Any] = field(default_factory=dict)
    unknown: dict[str, Any] = field(default_factory=dict)

    @property
    def strategy_name(self) -> str:
        """``natural``, ``round-robin`` or ``manual`` (a value rpchat does not know reads as natural)."""
        return STRATEGY_NAMES.get(self.strategy, "natural")

    def active(self) -> list[str]:
        """The members who are not muted, in member order."""
        return [m for m in self.members if m not in self.disabled_members]

    @classmethod
    def new(cls, name: str, members: list[str]) -> Group:
        """A new group with one empty chat, the way SillyTavern's "create group" makes it."""
        chat_id = chat_stamp()
        return cls(id=str(int(time.time() * 1000)), name=name, members=list(dict.fromkeys(members)),
                   chat_id=chat_id, chats=[chat_id],
                   unknown={"avatar_url": "img/ai4.png", "generation_mode": 0, "fav": False, "auto_mode_delay": 5,
                            "generation_mode_join_prefix": "", "generation_mode_join_suffix": "",
                            "hideMutedSprites": True})


def _texts(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        raise TypeError(f"{key} must be a list of names")
    return [str(v) for v in value]


def parse_group(data: dict[str, Any], source: Path | str) -> Group:
    """A group from SillyTavern's JSON object; ChatError names ``source`` and the problem."""
    try:
        gid = data.get("id")
        if not isinstance(gid, (str, int)) or isinstance(gid, bool) or not str(gid).strip():
            raise TypeError("id must be text")
        name = data.get("name", "")
        if not isinstance(name, str):
            raise TypeError("name must be text")
        strategy = data.get("activation_strategy", 0)
        if isinstance(strategy, str) and strategy.isdigit():
            strategy = int(strategy)
        if not isinstance(strategy, int) or isinstance(strategy, bool):
            raise TypeError("activation_strategy must be a number")
        chat_id = data.get("chat_id", gid)
        if not isinstance(chat_id, (str, int)) or isinstance(chat_id, bool):
            raise TypeError("chat_id must be text")
        meta = data.get("chat_metadata") or {}
        past = data.get("past_metadata") or {}
        if not isinstance(meta, dict) or not isinstance(past, dict):
            raise TypeError("chat_metadata and past_metadata must be objects")
        chats = _texts(data.get("chats"), "chats") or [str(chat_id)]
        return Group(
            id=str(gid), name=name, members=_texts(data.get("members"), "members"),
            disabled_members=_texts(data.get("disabled_members"), "disabled_members"), strategy=strategy,
            allow_self_responses=data.get("allow_self_responses") is True, chat_id=str(chat_id), chats=chats,
            chat_metadata=meta, past_metadata=past, unknown={k: v for k, v in data.items() if k not in _KEYS},
        )
    except TypeError as exc:
        raise ChatError(f"not a SillyTavern group: {exc}", source) from None


def load_group(path: Path) -> Group:
    """Read ``groups/<id>.json``; ChatError in one line when it is not a group."""
    return parse_group(read_json_object(Path(path), MAX_GROUP_BYTES, ChatError, "SillyTavern group"), path)


def dump_group(group: Group) -> bytes:
    """The group as SillyTavern writes it (``JSON.stringify(group, null, 4)``)."""
    data: dict[str, Any] = {
        "id": group.id, "name": group.name, "members": group.members,
        "allow_self_responses": group.allow_self_responses, "activation_strategy": group.strategy,
        "disabled_members": group.disabled_members, "chat_metadata": group.chat_metadata,
        "chat_id": group.chat_id, "chats": group.chats, "past_metadata": group.past_metadata,
    }
    for key, value in group.unknown.items():
        data.setdefault(key, value)
    return json.dumps(data, indent=4, ensure_ascii=False).encode("utf-8")


def save_group(group: Group, path: Path) -> None:
    """Write the group atomically (temp file, fsync, rename)."""
    try:
        write_atomic(Path(path), dump_group(group))
    except OSError as exc:
        raise ChatError(f"cannot write: {exc.strerror or exc}", path) from None
