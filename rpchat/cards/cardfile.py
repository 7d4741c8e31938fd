"""Card files on disk: read any format (told apart by content), write one chosen by the extension."""

from __future__ import annotations

from pathlib import Path

from rpchat import userfile
from rpchat.atomic import write_atomic
from rpchat.cards import charx, jsoncard, png
from rpchat.cards.model import Card
from rpchat.errors import CardError

# No real card comes near this; the cap keeps a hostile file from filling memory.
FILE_CAP = 64 * 1024 * 1024
EXTENSIONS = (".png", ".json", ".charx")


def read_capped(path: Path, cap: int = FILE_CAP) -> bytes:
    """The bytes of ``path``, refusing files over ``cap`` (and FIFOs, devices, folders) with a `CardError`."""
    return userfile.read_capped(path, cap, CardError, "card file")


def card_format(raw: bytes) -> str | None:
    """``"png"``, ``"charx"`` or ``"json"`` judged from the bytes, or None when it is none of them."""
    if png.is_png(raw):
        return "png"
    if charx.is_zip(raw):
        return "charx"
    head = raw[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"{"):
        return "json"
    return None


def load_card(path: Path) -> Card:
    """Load a PNG, JSON or CharX card, whatever its extension says; raises `CardError`."""
    path = Path(path)
    raw = read_capped(path)
    kind = card_format(raw)
    if kind == "png":
        return png.read_png_card(raw, path)
    if kind == "charx":
        return charx.read_charx_card(raw, path)
    suffix = path.suffix.lower()
    if kind == "json" or suffix == ".json":
        # A .json file that is not an object still gets the JSON parser's precise message.
        return jsoncard.card_from_dict(jsoncard.parse_json_bytes(raw, path), path)
    if suffix == ".png":
        raise CardError("not a PNG file", path)
    if suffix == ".charx":
        raise CardError("not a CharX (zip) file", path)
    raise CardError("not a character card (expected PNG, JSON or CharX)", path)


def card_bytes(card: Card, suffix: str, source: str | Path | None = None) -> bytes:
    """The card encoded for a file extension (``.png``, ``.json``, ``.charx``)."""
    where = source if source is not None else card.name
    suffix = suffix.lower()
    if suffix == ".png":
        return png.write_png_card(card, where)
    if suffix == ".charx":
        return charx.write_charx_card(card, where)
    if suffix == ".json":
        spec = card.spec if card.spec in jsoncard.SPEC_VERSIONS else jsoncard.V2
        return jsoncard.dump_json(jsoncard.card_to_dict(card, spec, hybrid=True), where, indent=4) + b"\n"
    raise CardError(
        f"cannot save a card as {suffix or 'a file without extension'!r} (use .png, .json or .charx)", where
    )


def save_card(card: Card, path: Path) -> None:
    """Write the card atomically in the format its extension names; raises `CardError`."""
    path = Path(path)
    data = card_bytes(card, path.suffix, path)
    try:
        write_atomic(path, data)
    except OSError as e:
        raise CardError(f"cannot write: {e.strerror or type(e).__name__}", path) from None
