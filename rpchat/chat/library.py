"""Where chats live: ``chats_dir/<card file stem>/<Character - 2024-05-01@12h30m00s>.jsonl``.

As in SillyTavern, a card's chats are keyed by its file, not by the name inside it: a card renamed in
the editor keeps its chats (its file and chat folder are renamed together, see `move_chats`), and a
duplicate is a new file that starts with none. A folder named after the character (chats from older
rpchat versions, or imported without a card) belongs to the cards of that name while no card file
claims it.

Names come from cards, which come from strangers, so every name is made safe before it
touches the file system: no separators, no ``..``, no control or bidi characters.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rpchat.cards.cardfile import load_card, save_card
from rpchat.cards.library import card_files, is_bundled, new_card_path
from rpchat.cards.model import Card
from rpchat.chat.model import Chat
from rpchat.chat.recent import LastChat, follow_moves, recorded_chat
from rpchat.chat.store import MAX_CHAT_BYTES, ChatStore, folder_lock, load_chat, salvage_chat, save_chat
from rpchat.errors import CardError, ChatError
from rpchat.filenames import safe_name, unique_path
from rpchat.paths import Paths, named_chats_dir, profile
from rpchat.userfile import read_capped

_PREVIEW = 200
# Copies rpchat keeps aside (see store.keep_aside / save_conflict_copy); not chats to list.
_ASIDE = re.compile(r"\.(corrupt|conflict)-\d{8}T\d{6}(-\d+)?\.jsonl$")


@dataclass(frozen=True)
class ChatEntry:
    """One chat file as the chat picker shows it; ``error`` is set when the file cannot be read."""

    path: Path
    turns: int
    last_date: str
    preview: str
    error: str | None = None
    # Lines that cannot be read; opening the chat keeps the rest and sets the original aside.
    bad_lines: int = 0


def character_folder(character_name: str, root: Path | None = None) -> Path:
    """The folder named after a character: where chats without a card of their own are filed."""
    return named_chats_dir(character_name, root)


def chats_folder(card_path: Path, root: Path | None = None) -> Path:
    """The folder holding one card's own chats, named after the card's file as SillyTavern does."""
    return character_folder(Path(card_path).stem, root)


def chat_folders(card_path: Path, name: str, root: Path | None = None) -> list[Path]:
    """Every folder whose chats belong to the card: its own, then the one named after the character
    (``name``, its display name) while no card file claims that folder as its own."""
    own = chats_folder(card_path, root)
    named = character_folder(name, root)
    folders = [own]
    if (named.name != own.name and named.is_dir() and not _same_dir(named, own)
            and named.name not in {safe_name(p.stem) for p in card_files()}):
        folders.append(named)
    return folders


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # a case-insensitive file system
    except OSError:
        return False


def new_chat_path(character_name: str, folder: Path | None = None) -> Path:
    """A free path for a new chat, named like SillyTavern: ``Name - 2024-05-01@12h30m00s.jsonl``."""
    folder = folder if folder is not None else character_folder(character_name)
    stamp = datetime.now().strftime("%Y-%m-%d@%Hh%Mm%Ss")
    return unique_path(folder / f"{safe_name(character_name)} - {stamp}.jsonl")


def _chat_files(folders: Iterable[Path]) -> list[Path]:
    files = []
    for folder in folders:
        if folder.is_dir():
            files += [p for p in folder.glob("*.jsonl") if p.is_file() and not _ASIDE.search(p.name)]

    def key(p: Path) -> tuple[int, str]:
        try:
            return (p.stat().st_mtime_ns, p.name)
        except OSError:
            return (0, p.name)

    return sorted(files, key=key, reverse=True)


def list_chats(card_path: Path, name: str | None = None) -> list[ChatEntry]:
    """The card's chats, most recently changed first; ``name`` is its display name (read from the card
    when not given). Unreadable files carry ``error``, files with bad lines ``bad_lines``."""
    entries = []
    for path in _chat_files(chat_folders(card_path, _name(card_path, name))):
        try:
            found = salvage_chat(read_capped(path, MAX_CHAT_BYTES, ChatError, "chat file"), path)
        except ChatError as exc:
            entries.append(ChatEntry(path, 0, "", "", error=exc.problem))
            continue
        chat = found.chat
        last = chat.turns[-1] if chat.turns else None
        preview = " ".join(last.text.split()) if last else ""
        if len(preview) > _PREVIEW:
            preview = preview[: _PREVIEW - 1] + "…"
        entries.append(ChatEntry(path, len(chat.turns), last.send_date if last else chat.create_date, preview,
                                 bad_lines=len(found.dropped) + found.header_rebuilt))
    return entries


def count_chats(card_path: Path, name: str | None = None) -> int:
    """How many chats the card has (what `list_chats` would list), without reading any of them."""
    return len(_chat_files(chat_folders(card_path, _name(card_path, name))))


def latest_chat(card_path: Path, name: str | None = None) -> Path | None:
    """The card's most recently changed chat file, or None when there is none."""
    files = _chat_files(chat_folders(card_path, _name(card_path, name)))
    return files[0] if files else None


def last_chat(paths: Paths | None = None) -> LastChat | None:
    """The chat to resume: the one recorded, with the card that owns its folder now (the recorded card
    may have been renamed). None when nothing was recorded or the chat file is gone."""
    found = recorded_chat(paths)
    if found is None or not found.chat.is_file():
        return None
    if found.card.is_file():
        return found
    # The card file was renamed or deleted outside rpchat: the card whose folder holds the chat.
    owner = next((p for p in card_files() if chats_folder(p) == found.chat.parent), None)
    return LastChat(owner, found.chat) if owner is not None else None


def _name(card_path: Path, name: str | None) -> str:
    if name is not None:
        return name
    try:
        return load_card(Path(card_path)).display_name
    except CardError:
        return Path(card_path).stem


def move_chats(old_card: Path, new_card: Path, name: str, root: Path | None = None) -> dict[Path, Path]:
    """Move every chat of the card at ``old_card`` (display name ``name``) into ``new_card``'s folder.

    Each file is renamed, never copied, so at every moment it is in exactly one folder and a crash
    loses nothing. Returns where each moved chat file went.
    """
    dest = chats_folder(new_card, root)
    moved: dict[Path, Path] = {}
    for folder in chat_folders(old_card, name, root):
        if folder == dest or not folder.is_dir():
            continue
        with folder_lock(folder):
            if not dest.exists():
                os.rename(folder, dest)  # the whole folder in one step
                moved.update({folder / p.name: dest / p.name for p in dest.iterdir() if p.suffix == ".jsonl"})
                continue
            dest.mkdir(parents=True, exist_ok=True)
            for path in sorted(folder.iterdir()):
                if path.name.startswith(".") or not path.is_file():
                    continue  # temp files of a dead writer; subfolders are not rpchat's
                target = unique_path(dest / path.name)
                os.rename(path, target)
                moved[path] = target
        try:
            folder.rmdir()
        except OSError:
            pass  # something of the user's is left in it
    follow_moves(moved, new_card)
    return moved


def save_branch(chat: Chat, upto: int, parent_path: Path) -> tuple[Chat, ChatStore]:
    """Branch ``chat`` after turn ``upto`` into a new file beside its parent; returns it and its store."""
    branch = chat.branch(upto, parent_path.name)
    stamp = datetime.now().strftime("%Y-%m-%d@%Hh%Mm%Ss")
    path = unique_path(parent_path.parent / f"Branch #{upto} - {stamp}.jsonl")
    store = ChatStore(path)
    store.save(branch)
    return branch, store


# --- SillyTavern import and export ---------------------------------------------------------------


def import_st_chat(src: Path, dest_dir: Path, character: str | None = None, folder: Path | None = None) -> Path:
    """Validate a SillyTavern chat and copy it into ``dest_dir/<character>/``; returns the new path.

    ``character`` (a card's name) files the chat under that card; the chat's character turns then carry
    that name too, so the file says who speaks. By default the chat's own character_name decides.
    ``folder``, when given, is the exact folder (a library card's own, `chats_folder`).
    """
    src = Path(src)
    chat = load_chat(src)
    if character:
        chat.rename_character(character)
    if folder is None:
        folder = Path(dest_dir) / safe_name(chat.character_name or src.parent.name)
    target = unique_path(Path(folder) / f"{safe_name(src.stem)}.jsonl")
    ChatStore(target).save(chat)
    return target


def export_st_chat(chat: Chat, dest: Path) -> None:
    """Write a plain SillyTavern chat file (without rpchat's own keys) to ``dest``."""
    dest = Path(dest)
    if dest.is_dir():
        dest = new_chat_path(chat.character_name, folder=dest)
    save_chat(chat.without_own_keys(), dest)


# --- a card's edits that move its chats (the card editor saves through these) -----------------------


def save_edited_card(card: Card, previous: Card, path: Path | None, folder: Path | None = None) -> Path:
    """Save ``card`` from the editor (``previous`` is the card it opened) and return where it went.

    A new card, or an edit of a bundled one, becomes a new file in the user's folder (a new character,
    with no chats). Any other card is saved in place, except that a card in the user's folder whose name
    changed is renamed after the new name, and its chats move along (`rename_card`).
    """
    folder = Path(folder) if folder is not None else profile().cards_dir
    if path is None or is_bundled(path):
        dest = new_card_path(folder, card.name, ".png", fresh_chats=True)
        save_card(card, dest)
        return dest
    path = Path(path)
    renamed = card.name != previous.name and safe_name(card.name, "card") != path.stem
    if renamed and path.parent.resolve() == folder.resolve():
        return rename_card(card, path, previous.display_name, folder)
    save_card(card, path)
    if previous.display_name != card.display_name:
        _move_chats(path, path, previous.display_name)  # chats filed under the old name come along
    return path


def rename_card(card: Card, path: Path, old_name: str, folder: Path | None = None) -> Path:
    """Save ``card`` (renamed; ``old_name`` is its display name before) under a file named after it and
    move its chats there; returns the new path.

    The steps are ordered so that a crash at any point loses no chat and leaves each one listed under a
    card: the new file is written first, then the chats move, then the old file is removed.
    """
    folder = Path(folder) if folder is not None else profile().cards_dir
    dest = new_card_path(folder, card.name, path.suffix.lower(), fresh_chats=True)
    save_card(card, dest)
    _move_chats(path, dest, old_name)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        raise CardError(f"saved as {dest.name}, but the old file stays: {e.strerror or type(e).__name__}",
                        path) from None
    return dest


def _move_chats(old: Path, new: Path, old_name: str) -> None:
    try:
        move_chats(old, new, old_name)
    except OSError as e:
        # The old card file is kept, so every chat is still listed under one of the two cards.
        raise CardError(f"saved as {new.name}, but its chats could not all be moved: "
                        f"{e.strerror or type(e).__name__}", old) from None
