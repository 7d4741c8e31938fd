"""CharX cards: a zip holding ``card.json`` (V3) and asset files; the first ``icon`` asset is the avatar.

The archive is only ever read in memory. Member names are checked and rejected when unsafe, and every
read is capped, so a hostile archive can neither escape a folder nor inflate without bound.
"""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path
from typing import Any

from rpchat.cards import jsoncard
from rpchat.cards.model import Card
from rpchat.errors import CardError

EMBED_PREFIX = "embeded://"  # sic: the V3 spec spells it this way
DEFAULT_ICON = "assets/icon/images/main"
MAX_MEMBERS = 10_000
JSON_CAP = 16 * 1024 * 1024
TOTAL_CAP = 64 * 1024 * 1024
# Fixed timestamps make the same card always produce the same archive bytes.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def is_zip(raw: bytes) -> bool:
    """Whether the bytes start like a zip archive."""
    return raw[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def read_charx_card(raw: bytes, source: str | Path) -> Card:
    """Read a CharX archive from memory into a `Card`, keeping its other files in ``card.embedded``."""
    try:
        return _read(raw, source)
    except CardError:
        raise
    # zipfile and its codecs raise many types on corrupt input; all mean "bad archive".
    except Exception as e:  # noqa: BLE001
        raise CardError(f"bad CharX archive: {_first_line(e) or type(e).__name__}", source) from None


def write_charx_card(card: Card, source: str | Path) -> bytes:
    """The card as CharX bytes: ``card.json``, the avatar at its icon asset's path, the embedded files."""
    from rpchat.cards.avatar import placeholder_avatar

    avatar = card.avatar or placeholder_avatar(card.name)
    assets = [dict(a) for a in card.assets]
    icon = _first_icon(assets)
    path = _embedded_path(icon, source) if icon else None
    if path is None:
        ext = _image_ext(avatar)
        path = f"{DEFAULT_ICON}.{ext}"
        assets.insert(0, {"type": "icon", "uri": EMBED_PREFIX + path, "name": "main", "ext": ext})
    doc = jsoncard.card_to_dict(card, jsoncard.V3)
    doc["data"]["assets"] = assets
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        _add(zf, "card.json", jsoncard.dump_json(doc, source, indent=2), zipfile.ZIP_DEFLATED)
        _add(zf, path, avatar, zipfile.ZIP_STORED)
        for name, data in card.embedded.items():
            if name in ("card.json", path):
                continue
            _check_name(name, source)
            _add(zf, name, data, zipfile.ZIP_DEFLATED)
    return out.getvalue()


def _read(raw: bytes, source: str | Path) -> Card:
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise CardError(f"CharX archive has more than {MAX_MEMBERS} files", source)
        members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            _check_name(info.filename, source)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise CardError(f"CharX member {info.filename!r} is a symbolic link", source)
            if info.filename in members:
                raise CardError(f"CharX archive has two members named {info.filename!r}", source)
            members[info.filename] = info
        if "card.json" not in members:
            raise CardError("CharX archive has no card.json", source)
        budget = _Budget(source)
        card_raw = budget.read(zf, members.pop("card.json"), JSON_CAP)
        card = jsoncard.card_from_dict(jsoncard.parse_json_bytes(card_raw, source), source)
        icon = _first_icon(card.assets)
        path = _embedded_path(icon, source) if icon else None
        if path is not None and path in members:
            card.avatar = budget.read(zf, members.pop(path), TOTAL_CAP)
        for name, info in members.items():
            if not info.is_dir():
                card.embedded[name] = budget.read(zf, info, TOTAL_CAP)
        return card


class _Budget:
    """Caps what one archive may inflate to in total, whatever sizes its headers claim."""

    def __init__(self, source: str | Path) -> None:
        self.left = TOTAL_CAP
        self.source = source

    def read(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
        limit = min(cap, self.left)
        with zf.open(info) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise CardError(
                f"CharX member {info.filename!r} inflates past {limit // 2**20} MiB (zip bomb?)", self.source
            )
        self.left -= len(data)
        return data


def _check_name(name: str, source: str | Path) -> None:
    # Members are never extracted, but names travel (into card.embedded, back into archives), so refuse
    # anything that would escape a folder if some tool did extract them.
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\0" in name
        or ":" in parts[0]
        or any(p in ("..", ".") for p in parts)
    ):
        raise CardError(f"CharX member has an unsafe path {name[:80]!r}", source)


def _first_icon(assets: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((a for a in assets if a.get("type") == "icon"), None)


def _embedded_path(asset: dict[str, Any], source: str | Path) -> str | None:
    uri = asset.get("uri", "")
    if not isinstance(uri, str) or not uri.startswith(EMBED_PREFIX):
        return None
    path = uri[len(EMBED_PREFIX) :]
    _check_name(path, source)
    return None if path == "card.json" else path


def _image_ext(image: bytes) -> str:
    if image.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        return "webp"
    if image[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return "png"


def _add(zf: zipfile.ZipFile, name: str, data: bytes, method: int) -> None:
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.compress_type = method
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""
