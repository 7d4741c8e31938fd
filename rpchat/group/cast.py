"""A group chat's cast: the group file, its members, who speaks now and who speaks next.

A `RoleplaySession` opened on a group (``open_chat_session(..., group=...)``) holds one as ``session.cast``;
the session's card is then the member speaking now. Member changes are made inside ``session.change()``
(the one mutation mechanism), which saves the group file with the chat, or puts both back.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

from rpchat.chat.model import Turn
from rpchat.errors import ChatError
from rpchat.group.library import load_members, member_turn, resolve_card
from rpchat.group.model import STRATEGIES, Group, load_group, save_group
from rpchat.group.turns import Member, speakers


class GroupCast:
    """The group side of a group chat session."""

    def __init__(self, group: Group, group_file: Path, members: list[Member]) -> None:
        self.group = group
        self.group_file = group_file
        self.members = members
        self.speaker: Member = members[0]
        # Natural order rolls dice; a seed (`rpchat reply --seed`) makes the choice repeatable.
        self.rng = random.Random()

    # --- who is who ----------------------------------------------------------------------------------
    def active_members(self) -> list[Member]:
        """The members who are not muted, in member order."""
        return [m for m in self.members if m.avatar not in self.group.disabled_members]

    def is_muted(self, member: Member) -> bool:
        return member.avatar in self.group.disabled_members

    def member(self, wanted: str) -> Member:
        """A member by name, card file name or card file stem (case-insensitive)."""
        key = wanted.strip().casefold()
        for m in self.members:
            if key in (m.name.casefold(), m.avatar.casefold(), Path(m.avatar).stem.casefold()):
                return m
        names = ", ".join(m.name for m in self.members)
        raise ChatError(f"{wanted!r} is not in group {self.group.name} (members: {names})", self.group_file)

    def author(self, turn: Turn) -> Member | None:
        """The member who wrote a character message (by its ``original_avatar``, else by name)."""
        avatar = turn.unknown.get("original_avatar")
        for m in self.members:
            if m.avatar == avatar:
                return m
        return next((m for m in self.members if m.name == " ".join(turn.name.split())), None)

    def next_speakers(self, turns: list[Turn]) -> list[Member]:
        """Who answers now, in order, by the group's turn order (empty in manual mode: the user picks)."""
        last = next((t for t in reversed(turns) if not t.hidden and not t.narrator), None)
        return speakers(self.group.strategy_name, self.active_members(), last,
                        allow_self=self.group.allow_self_responses, rng=self.rng)

    @staticmethod
    def is_greeting(turns: list[Turn], index: int) -> bool:
        """Every member greets before the user speaks: each of those messages is a greeting."""
        before = turns[: index + 1]
        return bool(before) and not any(t.is_user or t.narrator for t in before)

    # --- the prompt and the reply ------------------------------------------------------------------------
    def prompt_extras(self) -> dict[str, Any]:
        """`build_prompt`'s group arguments: the active members (and the speaker, muted or not), the muted."""
        active = [m for m in self.members if not self.is_muted(m) or m is self.speaker]
        return {"group": [m.card for m in active], "muted": [m.name for m in self.members if m not in active]}

    def new_turn(self) -> Turn:
        """The empty message the speaker's reply streams into."""
        return member_turn(self.speaker, "")

    # --- changes (made inside session.change(), which saves them) ---------------------------------------
    def snapshot(self) -> tuple[Group, list[Member]]:
        return copy.deepcopy(self.group), list(self.members)

    def restore(self, snap: tuple[Group, list[Member]]) -> None:
        self.group, self.members = copy.deepcopy(snap[0]), list(snap[1])

    def save_if_changed(self, snap: tuple[Group, list[Member]]) -> None:
        """Write the group file when the group differs from ``snap``."""
        if self.group != snap[0]:
            save_group(self.group, self.group_file)

    def set_strategy(self, name: str) -> None:
        """natural, round-robin or manual."""
        if name not in STRATEGIES:
            raise ChatError(f"unknown turn order {name!r} (choose: {', '.join(STRATEGIES)})", self.group_file)
        self.group.strategy = STRATEGIES[name]

    def set_muted(self, member: Member, muted: bool) -> None:
        """Mute a member (never picked to speak, left out of the prompt) or let them speak again."""
        self.group.disabled_members = [a for a in self.group.disabled_members if a != member.avatar]
        if muted:
            self.group.disabled_members.append(member.avatar)

    def add_member(self, card: str | Path) -> Member:
        """Add a library card (or a card file, imported first); it can speak from now on."""
        path = resolve_card(str(card))
        if path.name in self.group.members:
            raise ChatError(f"{path.name} is already in group {self.group.name}", self.group_file)
        notices: list[str] = []
        probe = copy.deepcopy(self.group)
        probe.members = [path.name]
        found = load_members(probe, notices)
        if not found:
            raise ChatError(notices[0] if notices else f"cannot load {path}", path)
        self.group.members.append(path.name)
        self.members.append(found[0])
        return found[0]

    def remove_member(self, member: Member) -> None:
        """Take a member out; their messages stay in the chat. A group keeps two or more members."""
        if len(self.group.members) <= 2:
            raise ChatError("a group keeps at least two members", self.group_file)
        self.group.members = [a for a in self.group.members if a != member.avatar]
        self.group.disabled_members = [a for a in self.group.disabled_members if a != member.avatar]
        self.members = [m for m in self.members if m.avatar != member.avatar]
        if self.speaker.avatar == member.avatar:
            self.speaker = self.members[0]

    def add_chat(self, chat_id: str) -> None:
        """List a chat (a branch) in the group and make it the current one."""
        self.group.chats.append(chat_id)
        self.group.chat_id = chat_id

    def reload(self) -> None:
        """Read the group file and the members' cards again (after a card was renamed or edited)."""
        self.group = load_group(self.group_file)
        self.members = load_members(self.group) or self.members
        self.speaker = next((m for m in self.members if m.avatar == self.speaker.avatar), self.members[0])
