"""The card library: the bundled cards plus the user's cards folder; import, duplicate and delete.

Only the user's cards folder is ever written. Imported files keep their exact bytes, so nothing a card
carries (unknown chunks, assets) is lost on the way in.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from rpchat.atomic import write_atomic
from rpchat.cards import charx, jsoncard, png
from rpchat.cards.cardfile import EXTENSIONS, card_format, load_card, read_capped
from rpchat.cards.model import Card
from rpchat.errors import CardError
from rpchat.paths import bundled_dir, profile

MAX_STEM = 80
_WINDOWS_RESERVED = {
    "con",
    "prn",
    "aux",
    "nul",
    *(f"com{i}" for i in range(1, 10)),
    *(f"lpt{i}" for i in range(1, 10)),
}
_UNSAFE = re.compile(r'[/\\:*?"<>|]')


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


def import_card(src: Path, folder: Path | None = None) -> Path:
    """Copy a card file into the user's cards folder under a safe unique name; returns the new path.

    The card is loaded first, so a broken file is refused with a `CardError` and never copied.
    """
    src = Path(src)
    raw = read_capped(src)
    card = _parse(raw, src)
    return _store(raw, card, _kind_suffix(raw), folder)


def duplicate_card(path: Path, folder: Path | None = None) -> Path:
    """Copy a card (bundled or the user's) into the user's cards folder; returns the copy's path."""
    path = Path(path)
    raw = read_capped(path)
    card = _parse(raw, path)
    return _store(raw, card, _kind_suffix(raw), folder)


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


def safe_filename(name: str, default: str = "card") -> str:
    """A file stem made from a card name that is safe on every OS and cannot leave its folder."""
    text = unicodedata.normalize("NFC", name)
    # Control, format (bidi overrides, zero-width) and separator characters never belong in a file name.
    text = "".join("_" if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") else c for c in text)
    text = _UNSAFE.sub("_", text)
    text = " ".join(text.split()).strip(" .")
    text = text[:MAX_STEM].rstrip(" .")
    while len(text.encode("utf-8")) > 200:
        text = text[:-1]
    if not text or set(text) <= {"_"}:
        return default
    if text.split(".")[0].lower() in _WINDOWS_RESERVED:
        text = "_" + text
    return text


def unique_path(folder: Path, stem: str, suffix: str) -> Path:
    """``folder/stem+suffix``, or ``stem (2)+suffix`` and so on when taken."""
    candidate = folder / f"{stem}{suffix}"
    n = 2
    while candidate.exists() or candidate.is_symlink():
        if n > 10_000:
            raise CardError("too many files with this name", folder / f"{stem}{suffix}")
        candidate = folder / f"{stem} ({n}){suffix}"
        n += 1
    return candidate


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


def _store(raw: bytes, card: Card, suffix: str, folder: Path | None) -> Path:
    folder = Path(folder) if folder is not None else profile().cards_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
        dest = unique_path(folder, safe_filename(card.name), suffix)
        write_atomic(dest, raw)
    except OSError as e:
        raise CardError(f"cannot write: {e.strerror or type(e).__name__}", folder) from None
    return dest
