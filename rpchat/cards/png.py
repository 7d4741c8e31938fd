"""PNG character cards: the card JSON lives base64-encoded in a ``chara`` (V1/V2) or ``ccv3`` (V3) text chunk.

Chunks are parsed here with struct and zlib rather than an image library, so every length and CRC is
checked and nothing is inflated past a cap, whatever a hostile file claims.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rpchat.cards import jsoncard
from rpchat.cards.model import Card
from rpchat.errors import CardError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_TYPES = (b"tEXt", b"zTXt", b"iTXt")
CARD_KEYWORDS = ("chara", "ccv3")
# A card's text, compressed or not, is never this big; a bigger one is an attack or a mistake.
TEXT_CAP = 16 * 1024 * 1024
MAX_CHUNKS = 100_000


@dataclass(frozen=True)
class Chunk:
    """One PNG chunk: its 4-letter type and its payload (the CRC is checked on read, recomputed on write)."""

    type: bytes
    data: bytes

    def encode(self) -> bytes:
        """The chunk as it sits in a file: length, type, data, CRC."""
        crc = zlib.crc32(self.data, zlib.crc32(self.type))
        return struct.pack(">I", len(self.data)) + self.type + self.data + struct.pack(">I", crc)


def is_png(raw: bytes) -> bool:
    """Whether the bytes start with the PNG signature."""
    return raw.startswith(SIGNATURE)


def read_chunks(raw: bytes, source: str | Path) -> list[Chunk]:
    """Split a PNG into chunks up to IEND, checking the signature, every length and every CRC."""
    if not raw.startswith(SIGNATURE):
        raise CardError("not a PNG file", source)
    chunks: list[Chunk] = []
    pos = len(SIGNATURE)
    view = memoryview(raw)
    while True:
        if pos + 8 > len(raw):
            raise CardError("PNG is truncated (no IEND chunk)", source)
        length, ctype = struct.unpack_from(">I4s", raw, pos)
        if not ctype.isalpha() or not ctype.isascii():
            raise CardError(f"PNG chunk at byte {pos} has a bad type {ctype!r}", source)
        name = ctype.decode("ascii")
        end = pos + 8 + length
        if end + 4 > len(raw):
            raise CardError(f"PNG is truncated (chunk {name} runs past the end)", source)
        data = view[pos + 8 : end]
        (crc,) = struct.unpack_from(">I", raw, end)
        if zlib.crc32(data, zlib.crc32(ctype)) != crc:
            raise CardError(f"bad CRC in PNG chunk {name}", source)
        chunks.append(Chunk(ctype, bytes(data)))
        if len(chunks) > MAX_CHUNKS:
            raise CardError(f"PNG has more than {MAX_CHUNKS} chunks", source)
        pos = end + 4
        if ctype == b"IEND":
            return chunks


def write_chunks(chunks: list[Chunk]) -> bytes:
    """Join chunks back into a PNG file."""
    return SIGNATURE + b"".join(chunk.encode() for chunk in chunks)


def read_png_card(raw: bytes, source: str | Path) -> Card:
    """Read a PNG card; ``ccv3`` wins over ``chara``. The avatar is the PNG without its card chunks."""
    chunks = read_chunks(raw, source)
    found: dict[str, Chunk] = {}
    for chunk in chunks:
        keyword = _card_keyword(chunk)
        if keyword and keyword not in found:
            found[keyword] = chunk
    if not found:
        raise CardError("PNG has no character data (no chara or ccv3 text chunk)", source)
    keyword = "ccv3" if "ccv3" in found else "chara"
    text = _chunk_text(found[keyword], source)
    card = jsoncard.card_from_dict(_decode_payload(text, keyword, source), source)
    card.avatar = write_chunks([c for c in chunks if not _card_keyword(c)])
    return card


def write_png_card(card: Card, source: str | Path) -> bytes:
    """The card as PNG bytes: its avatar's chunks kept, ``chara`` (V2) and ``ccv3`` (V3) chunks replaced."""
    chunks = _avatar_chunks(card, source)
    v2 = jsoncard.card_to_dict(card, jsoncard.V2, hybrid=True)
    v3 = jsoncard.card_to_dict(card, jsoncard.V3, hybrid=True)
    new = [
        Chunk(b"tEXt", b"chara\0" + base64.b64encode(jsoncard.dump_json(v2, source))),
        Chunk(b"tEXt", b"ccv3\0" + base64.b64encode(jsoncard.dump_json(v3, source))),
    ]
    kept = [c for c in chunks if not _card_keyword(c)]
    return write_chunks(kept[:-1] + new + kept[-1:])


def _avatar_chunks(card: Card, source: str | Path) -> list[Chunk]:
    from rpchat.cards.avatar import placeholder_avatar

    image = card.avatar if card.avatar else placeholder_avatar(card.name)
    if is_png(image):
        try:
            return read_chunks(image, source)
        except CardError:
            pass  # a damaged PNG may still decode; re-encode it below
    return read_chunks(_reencode(image, source), source)


def _reencode(image: bytes, source: str | Path) -> bytes:
    # A CharX icon may be WebP or JPEG; a PNG card needs PNG pixels.
    from PIL import Image

    try:
        with Image.open(io.BytesIO(image)) as img:
            img.load()
            out = io.BytesIO()
            img.save(out, format="PNG")
    # Pillow raises many types for bad images; all mean "not usable".
    except Exception as e:  # noqa: BLE001
        raise CardError(f"avatar is not a readable image ({type(e).__name__})", source) from None
    return out.getvalue()


def _card_keyword(chunk: Chunk) -> str | None:
    if chunk.type not in TEXT_TYPES:
        return None
    keyword = chunk.data[:80].split(b"\0", 1)[0].decode("latin-1").lower()
    return keyword if keyword in CARD_KEYWORDS else None


def _chunk_text(chunk: Chunk, source: str | Path) -> bytes:
    """The text of a tEXt/zTXt/iTXt chunk, inflated under the cap when compressed."""
    name = chunk.type.decode("ascii")
    if len(chunk.data) > TEXT_CAP:
        raise CardError(f"PNG {name} chunk is too large ({len(chunk.data) // 2**20} MiB)", source)
    _, _, rest = chunk.data.partition(b"\0")
    if chunk.type == b"tEXt":
        return rest
    if chunk.type == b"zTXt":
        if not rest or rest[0] != 0:
            raise CardError("PNG zTXt chunk has an unknown compression method", source)
        return _inflate(rest[1:], name, source)
    if len(rest) < 2:
        raise CardError("PNG iTXt chunk is truncated", source)
    compressed, method = rest[0], rest[1]
    parts = rest[2:].split(b"\0", 2)
    if len(parts) < 3:
        raise CardError("PNG iTXt chunk is truncated", source)
    text = parts[2]
    if compressed:
        if method != 0:
            raise CardError("PNG iTXt chunk has an unknown compression method", source)
        return _inflate(text, name, source)
    return text


def _inflate(data: bytes, name: str, source: str | Path) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, TEXT_CAP + 1)
    except zlib.error:
        raise CardError(f"PNG {name} chunk has corrupt compressed data", source) from None
    if len(out) > TEXT_CAP:
        raise CardError(f"PNG {name} chunk inflates past {TEXT_CAP // 2**20} MiB", source)
    if not inflater.eof:
        raise CardError(f"PNG {name} chunk has truncated compressed data", source)
    return out


def _decode_payload(text: bytes, keyword: str, source: str | Path) -> dict[str, Any]:
    if text.lstrip().startswith(b"{"):
        # A few tools store the JSON itself instead of base64.
        return jsoncard.parse_json_bytes(text, source)
    stripped = b"".join(text.split())
    try:
        raw = base64.b64decode(stripped + b"=" * (-len(stripped) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise CardError(f"PNG {keyword} chunk is not valid base64", source) from None
    return jsoncard.parse_json_bytes(raw, source)
