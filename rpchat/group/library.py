"""Where groups live, as in a SillyTavern data folder: ``groups/<id>.json`` and ``group chats/<chat_id>.jsonl``.

A group chat file is an ordinary chat file (header line, then messages; SillyTavern writes ``unused`` as
the header's names), so it is read, salvaged and written by `rpchat.chat.store` like any chat. Each
character message names its speaker's card in ``original_avatar``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rpchat.cards.cardfile import load_card
from rpchat.chat.model import Chat, Turn
from rpchat.chat.store import ChatStore, load_chat
from rpchat.errors import ChatError, RpchatError
from rpchat.filenames import safe_name
from rpchat.group.model import Group, chat_stamp, load_group, save_group
from rpchat.group.turns import Member, talkativeness
from rpchat.paths import profile
from rpchat.prompt.macros import expand_macros, normalize_newlines

GROUPS = "groups"
GROUP_CHATS = "group chats"


def groups_dir(root: Path | None = None) -> Path:
    """The folder of group definitions (SillyTavern's ``groups``)."""
    return (root if root is not None else profile().data_dir) / GROUPS


def group_chats_dir(root: Path | None = None) -> Path:
    """The folder of group chats (SillyTavern's ``group chats``)."""
    return (root if root is not None else profile().data_dir) / GROUP_CHATS


def group_path(group: Group, root: Path | None = None) -> Path:
    return groups_dir(root) / f"{safe_name(group.id)}.json"


def chat_path(chat_id: str, root: Path | None = None) -> Path:
    """The file of a group chat."""
    return group_chats_dir(root) / f"{safe_name(chat_id)}.jsonl"


@dataclass(frozen=True)
class GroupEntry:
    """One group file as the library lists it; ``error`` is set when it cannot be read."""

    path: Path
    group: Group | None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.group.name if self.group is not None else self.path.stem


def list_groups(root: Path | None = None) -> list[GroupEntry]:
    """Every group file, by name; a broken one is listed with its error."""
    entries = []
    folder = groups_dir(root)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            entries.append(GroupEntry(path, load_group(path)))
        except RpchatError as exc:
            entries.append(GroupEntry(path, None, exc.problem))
    return sorted(entries, key=lambda e: (e.name.casefold(), e.path.name))


def find_group(wanted: str | Path, root: Path | None = None) -> Path:
    """A group file by path, id or name (case-insensitive); ChatError listing the groups when none matches."""
    path = Path(wanted)
    if path.suffix == ".json" and path.is_file():
        return path
    entries = [e for e in list_groups(root) if e.group is not None]
    key = str(wanted)
    for found in ([e for e in entries if e.group is not None and e.group.id == key],
                  [e for e in entries if e.name == key],
                  [e for e in entries if e.name.casefold() == key.casefold()]):
        if found:
            return found[0].path
    known = ", ".join(e.name for e in entries) or "none yet: rpchat group new NAME CARD CARD..."
    raise ChatError(f"no group named {str(wanted)!r} (groups: {known})", groups_dir(root))


def card_by_file(avatar: str, folders: list[Path] | None = None) -> Path | None:
    """The library card whose file name is ``avatar`` (a member id)."""
    from rpchat.cards.library import card_files

    for path in card_files() if folders is None else [f / avatar for f in folders]:
        if path.name == avatar and path.is_file():
            return path
    return None


def resolve_card(wanted: str) -> Path:
    """A card for a group: a library card by file name, stem or character name, or a card file (imported
    into the library first, since members are library card files)."""
    from rpchat.cards.library import card_files, import_card, list_cards

    path = Path(wanted).expanduser()
    library = card_files()
    if path.is_file():
        if any(p.resolve() == path.resolve() for p in library):
            return path
        return import_card(path)
    # A file name says exactly which card; a character name may be shared (the user's own card wins then).
    entries = sorted(list_cards(), key=lambda e: e.bundled)
    key = wanted.casefold()
    for found in ([e for e in entries if key in (e.path.name.casefold(), e.path.stem.casefold())],
                  [e for e in entries if e.name.casefold() == key]):
        if found:
            return found[0].path
    raise ChatError(f"no card {wanted!r} in the library (a card file's path, or a name from the library)", wanted)


def load_members(group: Group, notices: list[str] | None = None) -> list[Member]:
    """The group's members whose cards load, in member order; the others are named in ``notices``."""
    out = []
    for avatar in group.members:
        path = card_by_file(avatar)
        try:
            if path is None:
                raise ChatError("no such card in the library; left out", avatar)
            card = load_card(path)
        except RpchatError as exc:
            if notices is not None:
                notices.append(f"group {group.name}: member {avatar}: {exc.problem}")
            continue
        name = " ".join(card.display_name.split()) or "Character"
        out.append(Member(avatar, card, name, talkativeness(card)))
    return out


def member_turn(member: Member, text: str | list[str]) -> Turn:
    """A character message in a group chat, tagged with its speaker as SillyTavern tags it."""
    swipes = [text] if isinstance(text, str) else list(text)
    turn = Turn(is_user=False, name=member.name, swipes=swipes)
    # SillyTavern finds who wrote a message by original_avatar; force_avatar is its picture's URL.
    turn.unknown["original_avatar"] = member.avatar
    turn.unknown["force_avatar"] = f"/thumbnail?type=avatar&file={member.avatar}"
    turn.had_swipes = True
    return turn


def start_group_chat(group: Group, members: list[Member], user_name: str) -> Chat:
    """A new group chat: each member's greeting in member order (alternate greetings as its swipes)."""
    chat = Chat(user_name=user_name, character_name=group.name)
    for member in members:
        greetings = [expand_macros(normalize_newlines(g), member.name, user_name).strip()
                     for g in member.card.greetings]
        if any(greetings):
            chat.turns.append(member_turn(member, greetings))
    return chat


def create_group(name: str, cards: list[Path], root: Path | None = None) -> tuple[Group, Path]:
    """Make a group of two or more library cards (file names are the member ids) and save it."""
    avatars = list(dict.fromkeys(Path(c).name for c in cards))
    if len(avatars) < 2:
        raise ChatError("a group needs two or more different cards", name)
    name = " ".join(name.split())
    if not name:
        raise ChatError("a group needs a name", "group")
    group = Group.new(name, avatars)
    path = group_path(group, root)
    while path.exists():  # two groups made in the same millisecond
        group.id = str(int(group.id) + 1)
        path = group_path(group, root)
    save_group(group, path)
    return group, path


def new_group_chat(group: Group, path: Path) -> str:
    """Give the group a new, current chat (saved in the group file) and return its id."""
    chat_id = chat_stamp()
    n = 2
    base = chat_id
    while chat_path(chat_id).exists() or chat_id in group.chats:
        chat_id = f"{base} ({n})"
        n += 1
    if group.chat_id and group.chat_metadata:
        group.past_metadata[group.chat_id] = group.chat_metadata
    group.chats.append(chat_id)
    group.chat_id, group.chat_metadata = chat_id, {}
    save_group(group, path)
    return chat_id


def open_group_chat(group: Group, members: list[Member], user_name: str, chat_id: str | None = None,
                    *, readonly: bool = False) -> tuple[Chat, ChatStore]:
    """The group's chat ``chat_id`` (its current one by default), started with the greetings when new."""
    path = chat_path(chat_id or group.chat_id)
    store = ChatStore(path)
    if path.exists():
        chat = load_chat(path) if readonly else store.open()
    else:
        chat = start_group_chat(group, members, user_name)
        old = group.past_metadata.get(group.chat_id) if chat_id else group.chat_metadata
        if isinstance(old, dict):
            chat.metadata.update(old)  # an old SillyTavern kept the chat's metadata in the group file
        if not readonly:
            store.save(chat)
    return chat, store


def rename_member(old: str, new: str, root: Path | None = None) -> list[Path]:
    """A card file was renamed ``old`` -> ``new``: every group naming it as a member, and its chats' messages
    (``original_avatar``), follow, as SillyTavern's renameGroupMember does. Returns the groups changed."""
    changed = []
    for entry in list_groups(root):
        group = entry.group
        if group is None or old not in group.members:
            continue
        for chat_id in group.chats:
            path = chat_path(chat_id, root)
            if not path.is_file():
                continue
            store = ChatStore(path)
            chat = store.open()
            hits = [t for t in chat.turns if t.unknown.get("original_avatar") == old]
            for turn in hits:
                turn.unknown["original_avatar"] = new
                turn.unknown["force_avatar"] = f"/thumbnail?type=avatar&file={new}"
            if hits:
                store.save(chat)
        group.members = [new if m == old else m for m in group.members]
        group.disabled_members = [new if m == old else m for m in group.disabled_members]
        save_group(group, entry.path)
        changed.append(entry.path)
    return changed
