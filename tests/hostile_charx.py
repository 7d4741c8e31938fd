"""Hostile CharX cards: unsafe member paths, symlinks, zip bombs, lying sizes, broken archives."""

from __future__ import annotations

import io
import json
import random
import stat
import struct
import warnings
import zipfile
from collections.abc import Callable, Iterator

from hostile_cards import MB, deep, minimal_png, v3
from hostile_case import Case, cut_points, flip_bits

# --- CharX ------------------------------------------------------------------------------------------


def _zip(members: list[tuple[zipfile.ZipInfo | str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # duplicate names are one of the attacks
        with zipfile.ZipFile(out, "w", method) as zf:
            for info, data in members:
                zf.writestr(info, data)
    return out.getvalue()


CARD_JSON = json.dumps(v3("Zippy", assets=[{"type": "icon", "uri": "embeded://assets/icon.png", "name": "main",
                                              "ext": "png"}])).encode()


def _charx_with(name: str, data: bytes = b"x") -> bytes:
    return _zip([("card.json", CARD_JSON), (name, data)])


def _big_member(size: int, name: str = "assets/big.bin") -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("card.json", CARD_JSON)
        with zf.open(name, "w", force_zip64=True) as f:
            block = b"\0" * MB
            for _ in range(size // MB):
                f.write(block)
    return out.getvalue()


def _lying_size() -> bytes:
    # The central directory says the member is 10 bytes; it inflates to 80 MB.
    raw = bytearray(_big_member(80 * MB))
    cd = raw.rfind(b"PK\x01\x02")
    struct.pack_into("<I", raw, cd + 24, 10)
    return bytes(raw)


def charx_cases(rng: random.Random) -> Iterator[Case]:
    def c(name: str, make: Callable[[], bytes], expect: str = "any") -> Case:
        return Case(f"charx/{name}", "card", "x.charx", make, expect)

    yield c("baseline", lambda: _zip([("card.json", CARD_JSON), ("assets/icon.png", minimal_png())]), "ok")
    unsafe = ["../evil.txt", "../../../../tmp/rpchat-evil", "/etc/passwd", "/abs/evil", "C:/evil.txt",
              "C:\\evil.txt", "a\\..\\..\\evil", "assets/../../evil", "./card.json", "assets/./x",
              "a/../b", "..", "assets/.."]  # fmt: skip
    for i, name in enumerate(unsafe):
        yield c(f"unsafe-path#{i}", lambda n=name: _charx_with(n), "error")
    # zipfile cuts a member name at its first NUL ("a\0b" reads as "a"), which is then safe.
    yield c("nul-in-member-name", lambda: _charx_with("a\0b"))
    yield c("icon-uri-traversal", lambda: _zip([("card.json", json.dumps(v3(
        "a", assets=[{"type": "icon", "uri": "embeded://../../evil.png"}])).encode())]), "error")
    yield c("icon-uri-absolute", lambda: _zip([("card.json", json.dumps(v3(
        "a", assets=[{"type": "icon", "uri": "embeded:///etc/passwd"}])).encode())]), "error")
    yield c("icon-uri-not-embedded", lambda: _zip([("card.json", json.dumps(v3(
        "a", assets=[{"type": "icon", "uri": "file:///etc/passwd"}])).encode())]), "ok")

    def symlink() -> bytes:
        info = zipfile.ZipInfo("assets/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        return _zip([("card.json", CARD_JSON), (info, b"/etc/passwd")])

    yield c("symlink-member", symlink, "error")

    def symlink_card() -> bytes:
        info = zipfile.ZipInfo("card.json")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        return _zip([(info, b"/etc/passwd")])

    yield c("symlink-card-json", symlink_card, "error")
    yield c("zip-bomb-80mb-member", lambda: _big_member(80 * MB), "error")
    yield c("zip-bomb-card-json-17mb", lambda: _zip([("card.json", b" " * (17 * MB))]), "error")
    yield c("zip-bomb-many-members", lambda: _zip(
        [("card.json", CARD_JSON)] + [(f"assets/b{i}", b"\0" * (10 * MB)) for i in range(7)]), "error")
    yield c("zip-lying-size", _lying_size, "error")
    yield c("10001-members", lambda: _zip(
        [("card.json", CARD_JSON)] + [(f"a/{i}", b"") for i in range(10_001)], zipfile.ZIP_STORED), "error")
    yield c("duplicate-card-json", lambda: _zip([("card.json", CARD_JSON), ("card.json", b"{}")]), "error")
    yield c("no-card-json", lambda: _zip([("other.json", CARD_JSON)]), "error")
    yield c("card-json-not-json", lambda: _zip([("card.json", b"not json")]), "error")
    yield c("card-json-nested-10000", lambda: _zip([("card.json", deep(10_000).encode())]), "error")
    yield c("card-json-wrong-types", lambda: _zip([("card.json", json.dumps(v3(["x"])).encode())]), "error")
    yield c("empty-zip", lambda: _zip([]), "error")
    yield c("end-record-only", lambda: b"PK\x05\x06" + b"\0" * 18, "error")

    def encrypted() -> bytes:
        raw = bytearray(_zip([("card.json", CARD_JSON)]))
        struct.pack_into("<H", raw, 6, 1)  # local header: encrypted flag
        cd = raw.rfind(b"PK\x01\x02")
        struct.pack_into("<H", raw, cd + 8, 1)
        return bytes(raw)

    yield c("encrypted-flag", encrypted, "error")
    yield c("unknown-compression", lambda: _unknown_method(), "error")
    base = _zip([("card.json", CARD_JSON), ("assets/icon.png", minimal_png())])
    for cut in cut_points(len(base), rng, 12):
        yield c(f"truncated@{cut}", lambda cut=cut: base[:cut], "error")
    for i in range(16):
        seed = rng.randrange(1 << 30)
        yield c(f"bitflip#{i}", lambda seed=seed: flip_bits(base, random.Random(seed), 1 + seed % 3))


def _unknown_method() -> bytes:
    raw = bytearray(_zip([("card.json", CARD_JSON)]))
    struct.pack_into("<H", raw, 8, 99)
    cd = raw.rfind(b"PK\x01\x02")
    struct.pack_into("<H", raw, cd + 10, 99)
    return bytes(raw)
