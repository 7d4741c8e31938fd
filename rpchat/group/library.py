"""Where groups live, as in a SillyTavern data folder: ``groups/<id>.json`` and ``group chats/<chat_id>.jsonl``.

A group chat file is an ordinary chat file (header line, then messages; SillyTavern writes ``unused`` as
the header's names), so it is read, salvaged and written by `rpchat.chat.store` like any chat. Each
character message names its speaker's card in ``original_avatar``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from rpchat.cards.cardfile import load_card
from rpchat.chat.library import safe_name
from rpchat.chat.model import Chat, Turn
from rpchat.chat.store import ChatStore, export_st_chat, load_chat, parse_chat, salvage_chat
from rpchat.errors import ChatError, RpchatError
from rpchat.group.model import Group, chat_stamp, load_group, save_group
from rpchat.group.turns import Member, talkativeness
from rpchat.paths import profile
from rpchat.prompt.macros import expand_macros, normalize_newlines
from rpchat.userfile import read_capped

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


# --- SillyTavern import and export ---------------------------------------------------------------


def _chat_with_header(data: bytes, source: Path, group: Group) -> Chat:
    """A group chat file from any SillyTavern version: older ones wrote messages only (the chat's metadata
    then sits in the group file), newer ones a header line first."""
    first = data.lstrip(b"\xef\xbb\xbf").lstrip().split(b"\n", 1)[0]
    try:
        headerless = isinstance(obj := json.loads(first), dict) and "mes" in obj
    except ValueError:
        headerless = False
    if not headerless:
        return parse_chat(data, source)
    meta = group.chat_metadata if source.stem == group.chat_id else group.past_metadata.get(source.stem, {})
    header = json.dumps({"user_name": "unused", "character_name": "unused",
                         "chat_metadata": meta if isinstance(meta, dict) else {}}).encode()
    found = salvage_chat(header + b"\n" + data, source)
    if found.dropped:
        # Line numbers of the file as it is (without the header line added here).
        lines = ", ".join(str(d.number - 1) for d in found.dropped)
        raise ChatError(f"line(s) {lines} could not be read", source)
    return found.chat


def import_st_group(src: Path, root: Path | None = None) -> tuple[Group, Path, list[str]]:
    """Copy a SillyTavern group (its ``groups/<id>.json``, or a data folder holding one group) with its chats
    into rpchat; member cards found in the data folder's ``characters`` are imported too. Returns the group,
    its new path and notes (chats or cards that were missing)."""
    from rpchat.cards.library import import_card

    src = Path(src)
    if src.is_dir():
        found = sorted((src / GROUPS).glob("*.json")) if (src / GROUPS).is_dir() else []
        if len(found) != 1:
            what = "no group" if not found else f"{len(found)} groups; name one groups/<id>.json file"
            raise ChatError(f"not a SillyTavern data folder with one group ({what})", src)
        src = found[0]
    group = load_group(src)
    data_dir = src.parent.parent
    notes: list[str] = []
    for avatar in group.members:
        if safe_name(avatar) != avatar:  # a member id is a file name, never a path
            notes.append(f"member {avatar!r} is not a card file name; left as it is")
            continue
        if card_by_file(avatar) is None:
            source = data_dir / "characters" / avatar
            if source.is_file():
                load_card(source)  # a broken card is refused, never copied
                keep = profile().cards_dir / avatar
                # The member id is the card's file name: keep it when it is free, so the group and its chats
                # still name the card the same way (and export back unchanged).
                imported = keep if not keep.exists() and safe_name(avatar) == avatar else import_card(source)
                if imported == keep:
                    keep.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, keep)
                if imported.name != avatar:
                    group.members = [imported.name if m == avatar else m for m in group.members]
                    group.disabled_members = [imported.name if m == avatar else m for m in group.disabled_members]
            else:
                notes.append(f"member {avatar} has no card in the library or in {data_dir / 'characters'}")
    chats: list[tuple[str, Chat]] = []
    for chat_id in group.chats:
        file = data_dir / GROUP_CHATS / f"{chat_id}.jsonl"
        if safe_name(chat_id) != chat_id:
            notes.append(f"chat {chat_id!r} is not a file name; not copied")
            continue
        if not file.is_file():
            notes.append(f"chat {chat_id} is not in {file.parent}")
            continue
        chats.append((chat_id, _chat_with_header(read_capped(file, 128 << 20, ChatError, "chat file"), file, group)))
    target = group_path(group, root)
    if target.exists():
        group.id = str(max(int(group.id) if group.id.isdigit() else 0, 0) + 1)
        while (target := group_path(group, root)).exists():
            group.id = str(int(group.id) + 1)
    for chat_id, chat in chats:
        dest = chat_path(chat_id, root)
        if dest.exists():
            notes.append(f"chat {chat_id} was already here and was kept as it is")
            continue
        ChatStore(dest).save(chat)
    save_group(group, target)
    return group, target, notes


def export_st_group(group: Group, dest: Path) -> list[Path]:
    """Write the group and its chats into a SillyTavern data folder layout under ``dest``; the chats as plain
    SillyTavern files (without rpchat's own keys). Returns the files written."""
    dest = Path(dest)
    written = [groups_dir(dest) / f"{safe_name(group.id)}.json"]
    save_group(group, written[0])
    for chat_id in group.chats:
        source = chat_path(chat_id)
        if source.is_file():
            target = chat_path(chat_id, dest)
            target.parent.mkdir(parents=True, exist_ok=True)
            export_st_chat(load_chat(source), target)
            written.append(target)
    return written


def copy_member_cards(group: Group, dest: Path) -> None:
    """Copy the members' card files into ``dest/characters`` (an export SillyTavern can open as is)."""
    folder = Path(dest) / "characters"
    folder.mkdir(parents=True, exist_ok=True)
    for avatar in group.members:
        path = card_by_file(avatar)
        if path is not None:
            shutil.copyfile(path, folder / avatar)
