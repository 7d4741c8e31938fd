"""SillyTavern groups in and out: a data folder's ``groups/<id>.json`` with its ``group chats``, and back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rpchat.cards.cardfile import load_card
from rpchat.chat.library import export_st_chat
from rpchat.chat.model import Chat
from rpchat.chat.store import ChatStore, load_chat, parse_chat, salvage_chat
from rpchat.errors import ChatError
from rpchat.filenames import safe_name
from rpchat.group.library import GROUP_CHATS, GROUPS, card_by_file, chat_path, group_path, groups_dir
from rpchat.group.model import Group, load_group, save_group
from rpchat.paths import profile
from rpchat.userfile import read_capped


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


def copy_member_cards(group: Group, dest: Path) -> list[Path]:
    """Copy the members' card files into ``dest/characters`` (an export SillyTavern can open as is).
    Returns the files written."""
    folder = Path(dest) / "characters"
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for avatar in group.members:
        path = card_by_file(avatar)
        if path is not None:
            shutil.copyfile(path, folder / avatar)
            written.append(folder / avatar)
    return written
