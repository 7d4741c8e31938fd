"""A group chat in motion: a `RoleplaySession` whose character is whichever member speaks.

Everything a 1:1 session does (swipes, edits, continue, branch, saving, salvage) works per message; this
adds who speaks next (`next_speakers`), replies by a named member, and member changes saved in the group
file. Regenerating or continuing a message always uses the member who wrote it.
"""

from __future__ import annotations

import copy
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rpchat.chat.model import Turn
from rpchat.config import Config
from rpchat.engine.base import Engine, PromptProgressCallback, Result
from rpchat.errors import ChatError, RpchatError
from rpchat.group.library import (
    chat_path,
    find_group,
    load_members,
    member_turn,
    new_group_chat,
    open_group_chat,
    resolve_card,
)
from rpchat.group.model import STRATEGIES, Group, load_group, save_group
from rpchat.group.turns import Member, speakers
from rpchat.personas import PersonaBook
from rpchat.session import ReplyMode, RoleplaySession, pick_persona, settings_banned


class GroupSession(RoleplaySession):
    """A group chat: ``card`` is the member speaking now (or about to); ``members`` all that load."""

    def __init__(self, group: Group, group_file: Path, members: list[Member], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group
        self.group_file = group_file
        self.members = members
        self.speaker: Member = members[0]
        # Natural order rolls dice; a seed (`rpchat reply --seed`) makes the choice repeatable.
        self.rng = random.Random()

    # --- members -----------------------------------------------------------------------------------
    def active_members(self) -> list[Member]:
        """The members who are not muted, in member order."""
        return [m for m in self.members if m.avatar not in self.group.disabled_members]

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

    def reload_group(self) -> None:
        """Read the group file, the members' cards and the chat again (after a card was renamed or edited)."""
        with self.lock:
            self.group = load_group(self.group_file)
            self.members = load_members(self.group) or self.members
            if self.store.changed_on_disk():
                self.chat = self.store.reload()

    def is_muted(self, member: Member) -> bool:
        return member.avatar in self.group.disabled_members

    def next_speakers(self) -> list[Member]:
        """Who answers now, in order, by the group's strategy (empty in manual mode: the user picks)."""
        with self.lock:
            last = next((t for t in reversed(self.chat.turns) if not t.hidden and not t.narrator), None)
            return speakers(self.group.strategy_name, self.active_members(), last,
                            allow_self=self.group.allow_self_responses, rng=self.rng)

    def _change_group(self, change: Callable[[Group], None]) -> None:
        # Unsaved means unchanged: the group file and the screen always agree.
        with self.lock:
            before = copy.deepcopy(self.group)
            change(self.group)
            try:
                save_group(self.group, self.group_file)
            except RpchatError:
                self.group = before
                raise

    def set_strategy(self, name: str) -> None:
        """natural, round-robin or manual; saved in the group file."""
        if name not in STRATEGIES:
            raise ChatError(f"unknown turn order {name!r} (choose: {', '.join(STRATEGIES)})", self.group_file)
        self._change_group(lambda g: setattr(g, "strategy", STRATEGIES[name]))

    def set_muted(self, member: Member, muted: bool) -> None:
        """Mute a member (never picked to speak, left out of the prompt) or let them speak again."""
        def change(g: Group) -> None:
            g.disabled_members = [a for a in g.disabled_members if a != member.avatar]
            if muted:
                g.disabled_members.append(member.avatar)
        self._change_group(change)

    def add_member(self, card: str | Path) -> Member:
        """Add a library card (or a card file, imported first) to the group; it can speak from now on."""
        path = resolve_card(str(card))
        if path.name in self.group.members:
            raise ChatError(f"{path.name} is already in group {self.group.name}", self.group_file)
        notices: list[str] = []
        probe = copy.deepcopy(self.group)
        probe.members = [path.name]
        found = load_members(probe, notices)
        if not found:
            raise ChatError(notices[0] if notices else f"cannot load {path}", path)
        self._change_group(lambda g: g.members.append(path.name))
        self.members.append(found[0])
        return found[0]

    def remove_member(self, member: Member) -> None:
        """Take a member out of the group; their messages stay in the chat. A group keeps two or more."""
        if len(self.group.members) <= 2:
            raise ChatError("a group keeps at least two members", self.group_file)

        def change(g: Group) -> None:
            g.members = [a for a in g.members if a != member.avatar]
            g.disabled_members = [a for a in g.disabled_members if a != member.avatar]
        self._change_group(change)
        self.members = [m for m in self.members if m.avatar != member.avatar]
        if self.speaker.avatar == member.avatar and self.members:
            self.speaker = self.members[0]
            self._speak_as(self.speaker)

    # --- generation --------------------------------------------------------------------------------
    def speak_as(self, member: Member | str) -> Member:
        """Make ``member`` (or the member of that name) the one the next prompt is built for."""
        who = self.member(member) if isinstance(member, str) else member
        with self.lock:
            self._speak_as(who)
        return who

    def _speak_as(self, member: Member) -> None:
        # card_path stays None: this chat is the group's, never one card's "last chat" to resume.
        self.speaker, self.card = member, member.card

    def reply(
        self,
        on_piece: Callable[[str], None],
        cancel: threading.Event | None = None,
        mode: ReplyMode = "reply",
        on_progress: PromptProgressCallback | None = None,
        speaker: Member | str | None = None,
    ) -> Result:
        """`RoleplaySession.reply` as a member: ``speaker`` for a new reply (default: the first of
        `next_speakers`, or any active member for impersonation); regenerate and continue use the
        member who wrote the last message."""
        with self.lock:
            if mode in ("regenerate", "continue"):
                index = self.last_reply_index()
                who = self.author(self.chat.turns[index]) if index is not None else None
                if index is not None and who is None:
                    raise ChatError(f"{self.chat.turns[index].name} is no longer in this group", self.group_file)
            elif isinstance(speaker, str):
                who = self.member(speaker)
            elif speaker is not None:
                who = speaker
            else:
                queue = self.next_speakers() if mode == "reply" else self.active_members()
                if not queue:
                    raise ChatError("nobody is set to speak: pick a member (manual turns)", self.group_file)
                who = queue[0]
            if who is not None:
                self._speak_as(who)
        return super().reply(on_piece, cancel, mode, on_progress)

    def build(self, mode: ReplyMode = "reply", **kwargs: Any) -> Any:
        """The prompt for ``mode``, as the member who would speak (see `reply`)."""
        if mode in ("regenerate", "continue"):
            with self.lock:
                index = self.last_reply_index()
                who = self.author(self.chat.turns[index]) if index is not None else None
                if who is not None:
                    self._speak_as(who)
        return super().build(mode, **kwargs)

    def _is_greeting(self, index: int) -> bool:
        # Every member greets before the user speaks: each of those is a greeting (its swipes are that
        # member's alternate greetings, and they wrap around as in a 1:1 chat).
        turns = self.chat.turns[: index + 1]
        return bool(turns) and not any(t.is_user or t.narrator for t in turns)

    def _prompt_extras(self) -> dict[str, Any]:
        active = [m for m in self.members if not self.is_muted(m) or m is self.speaker]
        return {"group": [m.card for m in active], "muted": [m.name for m in self.members if m not in active]}

    def _add_reply_turn(self) -> Turn:
        turn = member_turn(self.speaker, "")
        self.chat.turns.append(turn)
        return turn

    def branch(self, index: int) -> RoleplaySession:
        """A new group chat holding turns up to ``index``, listed in the group (which switches to it)."""
        base = super().branch(index)
        chat_id = base.path.stem

        def change(g: Group) -> None:
            g.chats.append(chat_id)
            g.chat_id = chat_id
        self._change_group(change)
        session = GroupSession(self.group, self.group_file, self.members, self.card, base.chat, base.store,
                               self.persona, self.fmt, self.sampling, engine=self.engine,
                               preset_name=self.preset_name, max_new=self.max_new, card_path=self.card_path)
        session.choices, session.banned_phrases = self.choices, self.banned_phrases
        return session

    def new_chat(self) -> str:
        """Start a new chat of this group (the greetings again); the group file then points at it."""
        with self.lock:
            return new_group_chat(self.group, self.group_file)


def open_group_session(
    group: str | Path,
    chat_path_or_id: Path | str | None = None,
    *,
    config: Config | None = None,
    personas: PersonaBook | None = None,
    engine: Engine | None = None,
    user: str | None = None,
    format_name: str | None = None,
    preset: str | None = None,
    readonly: bool = False,
    model: Path | None = None,
    remote: bool = False,
) -> GroupSession:
    """Open a group's chat (its current one, or ``chat_path_or_id``: a chat id or a file in ``group chats``).

    Reached through `rpchat.session.open_chat_session(..., group=...)`, the one way sessions are opened.
    """
    from rpchat.config import load_config
    from rpchat.engine.recognize import session_choices
    from rpchat.paths import profile

    cfg = config if config is not None else load_config(profile())
    book = personas if personas is not None else PersonaBook.load()
    file = find_group(group)
    grp = load_group(file)
    notices: list[str] = []
    members = load_members(grp, notices)
    if not members:
        raise ChatError(f"group {grp.name} has no member whose card loads", file)
    chat_id = None
    if chat_path_or_id is not None:
        chat_id = Path(chat_path_or_id).stem if str(chat_path_or_id).endswith(".jsonl") else str(chat_path_or_id)
        if chat_id not in grp.chats and not readonly:
            grp.chats.append(chat_id)
            grp.chat_id = chat_id
            save_group(grp, file)
    path = chat_path(chat_id or grp.chat_id)
    fresh = not path.exists()
    persona = pick_persona(book, user)
    chat, store = open_group_chat(grp, members, persona.name, chat_id, readonly=readonly)
    if not fresh:
        persona = pick_persona(book, user, chat.persona, chat.user_name)
        if persona.name != chat.user_name:
            chat.rename_user(persona.name)
    if user or fresh:
        chat.persona = persona.name
    choices, fmt, chosen = session_choices(
        cfg, chat_length=None if fresh else (chat.length,), model=model, format_name=format_name,
        preset_name=preset, remote=remote)
    if fresh:
        chat.length = choices.length.value
        if not readonly:
            store.save(chat)
    session = GroupSession(grp, file, members, members[0].card, chat, store, persona, fmt, chosen.sampling,
                           engine=engine, preset_name=chosen.name, max_new=cfg.max_new_tokens)
    session._speak_as(members[0])
    session.choices, session.notices = choices, [*choices.notices, *notices]
    session.banned_phrases = settings_banned(cfg, remote=remote or cfg.engine.kind == "remote")
    return session
