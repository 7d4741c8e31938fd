"""The card library: the bundled cards plus the user's cards folder; import, duplicate, rename and delete.

Only the user's cards folder is ever written. Imported files keep their exact bytes, so nothing a card
carries (unknown chunks, assets) is lost on the way in.

A card's chats are keyed by its file stem (see `rpchat.chat.library`), so no two card files share a stem,
a new character (duplicate, new card, edited copy of a bundled card) gets a stem with no chats yet, and
a rename renames the file and moves its chats with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rpchat.atomic import write_atomic
from rpchat.cards import charx, jsoncard, png
from rpchat.cards.cardfile import EXTENSIONS, card_format, load_card, read_capped
from rpchat.cards.model import Card
from rpchat.errors import CardError
from rpchat.filenames import safe_name
from rpchat.paths import bundled_dir, named_chats_dir, profile


@dataclass(frozen=True)
class CardEntry:
    """One card file in the library; ``error`` is set (and the name is the file stem) when it cannot load."""

    path: Path
    name: str
    tags: tuple[str, ...] = ()
    creator_notes: str = ""
    bundled: bool = False
    error: str | None = None


def library_folders() -> list[tuple[Path, bool]]:
    """The folders the library lists, each with whether it is the bundled (read-only) one."""
    return [(bundled_dir("cards"), True), (profile().cards_dir, False)]


def list_cards(folders: list[tuple[Path, bool]] | None = None) -> list[CardEntry]:
    """Every card file in the library folders, bundled first, each folder sorted by card name.

    A file that fails to load is listed with its error instead of hiding it or failing the whole list.
    """
    entries: list[CardEntry] = []
    for folder, bundled in folders if folders is not None else library_folders():
        found = [_entry(p, bundled) for p in _card_files(folder)]
        entries.extend(sorted(found, key=lambda e: (e.name.casefold(), e.path.name)))
    return entries


def card_files(folders: list[tuple[Path, bool]] | None = None) -> list[Path]:
    """Every card file in the library folders, bundled first, whether it loads or not."""
    return [p for folder, _ in (folders if folders is not None else library_folders()) for p in _card_files(folder)]


def import_card(src: Path, folder: Path | None = None) -> Path:
    """Copy a card file into the user's cards folder under a safe unique name; returns the new path.

    The card is loaded first, so a broken file is refused with a `CardError` and never copied. A card
    imported again after its file was deleted lands on the same name, and so finds its chats again.
    """
    src = Path(src)
    raw = read_capped(src)
    card = _parse(raw, src)
    return _store(raw, card, _kind_suffix(raw), folder, fresh_chats=False)


def duplicate_card(path: Path, folder: Path | None = None) -> Path:
    """Copy a card (bundled or the user's) into the user's cards folder; returns the copy's path.

    The copy is a new character: it starts with no chats, and the original keeps all of its own.
    """
    path = Path(path)
    raw = read_capped(path)
    card = _parse(raw, path)
    return _store(raw, card, _kind_suffix(raw), folder, fresh_chats=True)


def new_card_path(folder: Path, name: str, suffix: str, *, fresh_chats: bool) -> Path:
    """A free path in ``folder`` for a new card file named after ``name``.

    Its stem is one no other card file has (in any format, bundled cards included), so no two cards
    share a chat folder; with ``fresh_chats`` no chat folder exists under it yet either.
    """
    taken = {safe_name(p.stem).casefold() for p in card_files() + _card_files(folder)}
    stem = safe_name(name, "card")
    for n in range(1, 10_001):
        candidate = folder / (f"{stem}{suffix}" if n == 1 else f"{stem} ({n}){suffix}")
        if candidate.exists() or candidate.is_symlink() or safe_name(candidate.stem).casefold() in taken:
            continue
        if fresh_chats and named_chats_dir(candidate.stem).exists():
            continue
        return candidate
    raise CardError("too many files with this name", folder / f"{stem}{suffix}")


def delete_card(path: Path, folder: Path | None = None) -> None:
    """Delete a card file from the user's cards folder; any other file is refused with a `CardError`."""
    path = Path(path)
    folder = Path(folder) if folder is not None else profile().cards_dir
    if path.is_symlink() or path.resolve().parent != folder.resolve():
        raise CardError("only cards in your cards folder can be deleted", path)
    if path.suffix.lower() not in EXTENSIONS:
        raise CardError("not a card file", path)
    try:
        path.unlink()
    except FileNotFoundError:
        raise CardError("no such file", path) from None
    except OSError as e:
        raise CardError(f"cannot delete: {e.strerror or type(e).__name__}", path) from None


def _card_files(folder: Path) -> list[Path]:
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    # Hidden names include the temp files of an interrupted atomic write.
    return [
        folder / n
        for n in names
        if not n.startswith(".") and Path(n).suffix.lower() in EXTENSIONS and (folder / n).is_file()
    ]


def _entry(path: Path, bundled: bool) -> CardEntry:
    try:
        card = load_card(path)
    except CardError as e:
        return CardEntry(path=path, name=path.stem, bundled=bundled, error=e.problem)
    return CardEntry(
        path=path,
        name=card.display_name,
        tags=tuple(card.tags),
        creator_notes=card.creator_notes,
        bundled=bundled,
    )


def _parse(raw: bytes, source: Path) -> Card:
    kind = card_format(raw)
    if kind == "png":
        return png.read_png_card(raw, source)
    if kind == "charx":
        return charx.read_charx_card(raw, source)
    if kind == "json":
        return jsoncard.card_from_dict(jsoncard.parse_json_bytes(raw, source), source)
    raise CardError("not a character card (expected PNG, JSON or CharX)", source)


def _kind_suffix(raw: bytes) -> str:
    return {"png": ".png", "charx": ".charx"}.get(card_format(raw) or "", ".json")


def _store(raw: bytes, card: Card, suffix: str, folder: Path | None, *, fresh_chats: bool) -> Path:
    folder = Path(folder) if folder is not None else profile().cards_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
        dest = new_card_path(folder, card.name, suffix, fresh_chats=fresh_chats)
        write_atomic(dest, raw)
    except OSError as e:
        raise CardError(f"cannot write: {e.strerror or type(e).__name__}", folder) from None
    return dest


def is_bundled(path: Path) -> bool:
    """True for a card file shipped with rpchat (read-only: saving it makes the user's own copy)."""
    try:
        return Path(path).resolve().is_relative_to(bundled_dir("cards").resolve())
    except OSError:
        return False
