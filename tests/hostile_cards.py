"""Hostile character cards: broken PNGs, bombs, bad base64/JSON/UTF-8, wrong field types, evil CharX."""

from __future__ import annotations

import base64
import functools
import json
import os
import random
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hostile_case import Case, cut_points, flip_bits

SERAPHINA = Path(__file__).resolve().parent / "fixtures" / "default_Seraphina.png"
SIG = b"\x89PNG\r\n\x1a\n"
MB = 1024 * 1024


# --- building blocks -------------------------------------------------------------------------------


def chunk(ctype: bytes, data: bytes, crc: int | None = None) -> bytes:
    """One PNG chunk with a correct CRC unless ``crc`` is given."""
    if crc is None:
        crc = zlib.crc32(data, zlib.crc32(ctype))
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", crc & 0xFFFFFFFF)


def chunk_spans(raw: bytes) -> list[tuple[int, int, bytes]]:
    """(offset, data length, type) of each well-formed chunk of a good PNG, up to IEND."""
    spans = []
    pos = len(SIG)
    while pos + 8 <= len(raw):
        length, ctype = struct.unpack_from(">I4s", raw, pos)
        spans.append((pos, length, ctype))
        pos += 12 + length
        if ctype == b"IEND":
            break
    return spans


def v2(name: Any = "Hostile", **data: Any) -> dict[str, Any]:
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": name, **data}}


def v3(name: Any = "Hostile", **data: Any) -> dict[str, Any]:
    return {"spec": "chara_card_v3", "spec_version": "3.0", "data": {"name": name, **data}}


def b64(doc: Any) -> bytes:
    return base64.b64encode(json.dumps(doc).encode())


@functools.lru_cache(maxsize=1)
def base_png() -> bytes:
    """A real card written by rpchat itself (placeholder avatar, lorebook, V3 fields)."""
    from rpchat.cards import Card, save_card

    card = Card(
        name="Hostile Hal",
        description="{{char}} tests parsers.\r\nSecond line.",
        first_mes="Hello, {{user}}.",
        alternate_greetings=["Hi.", "Hey."],
        tags=["test"],
        extensions={"depth_prompt": {"prompt": "x", "depth": 4}, "custom": [1, 2, {"a": None}]},
        character_book={"entries": [{"keys": ["sea"], "content": "The sea is cold.", "enabled": True}]},
        nickname="Hal",
    )
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "hal.png"
        save_card(card, path)
        return path.read_bytes()


def minimal_png(*extra: bytes) -> bytes:
    """A 1x1 PNG with ``extra`` chunks before IEND."""
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    idat = chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
    return SIG + ihdr + idat + b"".join(extra) + chunk(b"IEND", b"")


def text(keyword: str, payload: bytes) -> bytes:
    return chunk(b"tEXt", keyword.encode("latin-1") + b"\0" + payload)


def bomb_stream(gib: int = 2) -> bytes:
    """A deflate stream of ~``gib`` GiB of zero bytes, built from one repeated 1 MiB block (~4 MB)."""
    deflater = zlib.compressobj(9)
    block = b"\0" * MB
    head = deflater.compress(block) + deflater.flush(zlib.Z_FULL_FLUSH)
    unit = deflater.compress(block) + deflater.flush(zlib.Z_FULL_FLUSH)
    return head + unit * (gib * 1024 - 1)


# --- PNG mutations of real cards ------------------------------------------------------------------


def _png_sources() -> list[tuple[str, Callable[[], bytes]]]:
    sources: list[tuple[str, Callable[[], bytes]]] = [("made", base_png)]
    if SERAPHINA.exists():
        sources.append(("seraphina", SERAPHINA.read_bytes))
    return sources


def _recrc(raw: bytes, offset: int, length: int) -> bytes:
    ctype = raw[offset + 4 : offset + 8]
    data = raw[offset + 8 : offset + 8 + length]
    crc = struct.pack(">I", zlib.crc32(data, zlib.crc32(ctype)))
    return raw[: offset + 8 + length] + crc + raw[offset + 12 + length :]


def png_mutations(rng: random.Random) -> Iterator[Case]:
    for label, load in _png_sources():
        raw = load()
        spans = chunk_spans(raw)
        edges = tuple(o for o, _, _ in spans) + tuple(o + 8 for o, _, _ in spans[:6])
        for cut in cut_points(len(raw), rng, 30, must=edges[:12]):
            yield Case(f"png/{label}/truncated@{cut}", "card", "t.png", lambda raw=raw, cut=cut: raw[:cut], "error")
        for i in range(30):
            seed = rng.randrange(1 << 30)
            yield Case(
                f"png/{label}/bitflip#{i}",
                "card",
                "f.png",
                lambda raw=raw, seed=seed: flip_bits(raw, random.Random(seed), 1 + seed % 3),
            )
        # Flips inside the card chunks with the CRC made right again reach base64, JSON and field checks.
        card_spans = [s for s in spans if s[2] in (b"tEXt", b"zTXt", b"iTXt") and s[1] > 16]
        for i in range(24):
            off, length, _ = card_spans[i % len(card_spans)]
            seed = rng.randrange(1 << 30)

            def flipped(raw: bytes = raw, off: int = off, length: int = length, seed: int = seed) -> bytes:
                r = random.Random(seed)
                out = flip_bits(raw, r, 1 + seed % 4, off + 8 + 6, off + 8 + length)
                return _recrc(out, off, length)

            yield Case(f"png/{label}/payload-flip-crc-fixed#{i}", "card", "p.png", flipped)
        for off, length, ctype in spans[:8]:
            name = ctype.decode("latin-1")

            def bad_crc(raw: bytes = raw, off: int = off, length: int = length) -> bytes:
                at = off + 8 + length
                return raw[:at] + bytes(b ^ 0xA5 for b in raw[at : at + 4]) + raw[at + 4 :]

            yield Case(f"png/{label}/wrong-crc-{name}@{off}", "card", "c.png", bad_crc, "error")
            for tag, new_len in (("past-end", len(raw) - off), ("max", 0xFFFFFFFF), ("2g", 0x7FFFFFFF)):

                def long_len(raw: bytes = raw, off: int = off, new_len: int = new_len) -> bytes:
                    return raw[:off] + struct.pack(">I", new_len) + raw[off + 4 :]

                yield Case(f"png/{label}/length-{tag}-{name}@{off}", "card", "l.png", long_len, "error")


# --- PNG cards built from scratch -----------------------------------------------------------------


def png_built() -> Iterator[Case]:
    good = b64(v2())

    def c(name: str, make: Callable[[], bytes], expect: str = "any") -> Case:
        return Case(f"png/built/{name}", "card", "b.png", make, expect)

    yield c("baseline", lambda: minimal_png(text("chara", good)), "ok")
    yield c("50mb-chara-text", lambda: minimal_png(text("chara", b"QUFB" * (50 * MB // 4))), "error")
    yield c("50mb-ccv3-itxt", lambda: minimal_png(
        chunk(b"iTXt", b"ccv3\0\0\0\0\0" + b"QUFB" * (50 * MB // 4)), text("chara", good)), "error")
    yield c("50mb-comment-beside-card", lambda: minimal_png(text("Comment", b"x" * 50 * MB), text("chara", good)))
    yield c("ztxt-bomb-2gib", lambda: minimal_png(chunk(b"zTXt", b"chara\0\0" + bomb_stream())), "error")
    yield c("itxt-bomb-2gib", lambda: minimal_png(chunk(b"iTXt", b"ccv3\0\x01\0\0\0" + bomb_stream())), "error")
    yield c("ztxt-bomb-of-base64", lambda: minimal_png(
        chunk(b"zTXt", b"chara\0\0" + zlib.compress(b"QUFB" * (20 * MB // 4), 9))), "error")
    yield c("ztxt-truncated-stream", lambda: minimal_png(
        chunk(b"zTXt", b"chara\0\0" + zlib.compress(good)[:-9])), "error")
    yield c("ztxt-bad-method", lambda: minimal_png(chunk(b"zTXt", b"chara\0\x07" + zlib.compress(good))), "error")
    yield c("ztxt-garbage", lambda: minimal_png(chunk(b"zTXt", b"chara\0\0" + b"\x78\x9c" * 50)),
            "error")
    yield c("itxt-missing-fields", lambda: minimal_png(chunk(b"iTXt", b"chara\0\x01")), "error")
    yield c("itxt-no-separators", lambda: minimal_png(chunk(b"iTXt", b"chara\0\0\0" + good)), "error")
    yield c("itxt-bad-method", lambda: minimal_png(chunk(b"iTXt", b"chara\0\x01\x05\0\0" + zlib.compress(good))),
            "error")
    yield c("itxt-ok-compressed", lambda: minimal_png(chunk(b"iTXt", b"chara\0\x01\0\0\0" + zlib.compress(good))),
            "ok")
    junk = {
        "star": good[:20] + b"*" + good[20:],
        "at-signs": b"@@" + good,
        "unicode": good[:10] + "é".encode() + good[10:],
        "nul": good[:10] + b"\0" + good[10:],
        "eq-in-middle": good[:12] + b"==" + good[12:],
        "no-padding": good.rstrip(b"="),
        "urlsafe": base64.urlsafe_b64encode(json.dumps(v2(name="?>?>?>~~~")).encode()),
        "data-uri": b"data:application/json;base64," + good,
        "trailing-garbage": good + b"!!!!",
        "newlines-inside": b"\n".join(good[i : i + 10] for i in range(0, len(good), 10)),
        "only-padding": b"====",
        "empty": b"",
        "one-char": b"Q",
        "base64-of-binary": base64.b64encode(bytes(range(256))),
        "base64-of-base64": base64.b64encode(good),
        "raw-json-not-base64": json.dumps(v2()).encode(),
        "raw-json-broken": b'{"spec": "chara_card_v2", "data": {',
    }
    for name, payload in junk.items():
        yield c(f"base64-junk-{name}", lambda p=payload: minimal_png(text("chara", p)))
    yield c("no-card-chunk", lambda: minimal_png(text("Comment", b"hello")), "error")
    yield c("no-iend", lambda: minimal_png(text("chara", good))[:-12], "error")
    yield c("data-after-iend", lambda: minimal_png(text("chara", good)) + b"trailing junk" * 100, "ok")
    yield c("two-chara-chunks", lambda: minimal_png(text("chara", good), text("chara", b"%%%")), "ok")
    yield c("bad-ccv3-good-chara", lambda: minimal_png(text("chara", good), text("ccv3", b"%%%")), "error")
    yield c("chunk-type-binary", lambda: minimal_png(chunk(b"\x00\x01\x02\x03", b"x"), text("chara", good)), "error")
    yield c("keyword-80-bytes-no-nul", lambda: minimal_png(chunk(b"tEXt", b"c" * 200), text("chara", good)), "ok")
    yield c("100001-empty-chunks", lambda: minimal_png(*([chunk(b"tEXt", b"")] * 100_001), text("chara", good)),
            "error")
    yield c("signature-only", lambda: SIG, "error")
    yield c("empty-file", lambda: b"", "error")
    yield c("signature-then-zeros", lambda: SIG + b"\0" * 4096, "error")
    yield c("iend-first", lambda: SIG + chunk(b"IEND", b"") + text("chara", good), "error")


# --- card JSON (as .json files, and a few inside PNGs) --------------------------------------------

FIELDS = (
    "name", "description", "personality", "scenario", "first_mes", "mes_example", "creator_notes",
    "system_prompt", "post_history_instructions", "alternate_greetings", "tags", "creator",
    "character_version", "extensions", "character_book", "nickname", "creator_notes_multilingual",
    "source", "group_only_greetings", "assets", "creation_date", "modification_date",
)  # fmt: skip
WRONG_VALUES: dict[str, Any] = {
    "list": ["a", ["b"]],
    "number": 12345,
    "object": {"x": 1},
    "bool": True,
    "float": 1.5,
    "list-of-numbers": [1, 2, 3],
}


def deep(n: int, open_: str = "[", close: str = "]") -> str:
    return open_ * n + close * n


def nested_object(n: int) -> str:
    return '{"a":' * n + "1" + "}" * n


def json_cards(rng: random.Random) -> Iterator[Case]:
    def c(name: str, make: Callable[[], bytes], expect: str = "any", filename: str = "j.json") -> Case:
        return Case(f"json/{name}", "card", filename, make, expect)

    for field in FIELDS:
        for kind, value in WRONG_VALUES.items():
            for spec, wrap in (("v2", v2), ("v3", v3)):
                if spec == "v2" and field in ("nickname", "source", "assets", "creation_date", "modification_date",
                                              "creator_notes_multilingual", "group_only_greetings"):
                    continue
                doc = wrap(**{field: value}) if field != "name" else wrap(value)
                yield c(f"wrong-type-{spec}-{field}-as-{kind}", lambda d=doc: json.dumps(d).encode())
    yield c("v1-name-as-list", lambda: json.dumps({"name": ["a"], "first_mes": "x"}).encode(), "error")
    yield c("v1-greeting-as-number", lambda: json.dumps({"name": "a", "first_mes": 5}).encode(), "error")
    yield c("data-as-list", lambda: json.dumps({"spec": "chara_card_v2", "data": [1]}).encode(), "error")
    yield c("data-as-string", lambda: json.dumps({"spec": "chara_card_v3", "data": "x"}).encode(), "error")
    yield c("spec-as-number", lambda: json.dumps({"spec": 3, "data": {"name": "a"}}).encode())
    yield c("book-entries-as-object", lambda: json.dumps(v2(character_book={"entries": {"a": 1}})).encode(), "error")
    yield c("book-entry-keys-as-string", lambda: json.dumps(
        v2(character_book={"entries": [{"keys": "sea", "content": "x"}]})).encode(), "error")
    for n in (99, 100, 101, 10_000):
        yield c(f"nested-list-{n}-in-extensions", lambda n=n: (
            '{"spec":"chara_card_v2","data":{"name":"a","extensions":{"x":' + deep(n) + "}}}").encode())
    yield c("nested-10000-as-name", lambda: ('{"name":' + deep(10_000) + "}").encode(), "error")
    yield c("nested-10000-objects", lambda: ('{"name":"a","data":' + nested_object(10_000) + "}").encode(), "error")
    yield c("nested-10000-top", lambda: deep(10_000).encode(), "error")
    yield c("nested-10000-in-book", lambda: (
        '{"spec":"chara_card_v2","data":{"name":"a","character_book":{"entries":[' + deep(10_000) + "]}}}"
    ).encode(), "error")
    yield c("huge-int-5000-digits", lambda: ('{"name":"a","creation_date":' + "9" * 5000 + "}").encode(), "error")
    yield c("float-1e999", lambda: b'{"spec":"chara_card_v3","data":{"name":"a","creation_date":1e999}}', "error")
    yield c("nan", lambda: b'{"name":"a","x":NaN}', "error")
    yield c("infinity-timestamp", lambda: b'{"spec":"chara_card_v3","data":{"name":"a","creation_date":-Infinity}}',
            "error")
    yield c("lone-surrogate-escapes", lambda: b'{"name":"a\\ud800b","first_mes":"\\udfff"}', "ok")
    enc = {
        "latin1": json.dumps({"name": "Zoë"}, ensure_ascii=False).encode("latin-1"),
        "utf16-bom": json.dumps({"name": "Zoë"}).encode("utf-16"),
        "utf32": json.dumps({"name": "a"}).encode("utf-32"),
        "overlong-slash": b'{"name":"a\xc0\xafb"}',
        "surrogate-bytes": b'{"name":"a\xed\xa0\x80"}',
        "ff-bytes": b'{"name":"\xff\xfe"}',
        "bad-continuation": b'{"name":"\xe2\x28\xa1"}',
        "cut-multibyte": b'{"name":"a"}\xe2\x82',
        "nul-in-json": b'{"name":"a\x00"}',
    }
    for name, raw in enc.items():
        yield c(f"non-utf8-{name}", lambda r=raw: r)
        yield Case(f"png/non-utf8-{name}", "card", "u.png",
                   lambda r=raw: minimal_png(text("chara", base64.b64encode(r))))
    yield c("bom-then-card", lambda: b"\xef\xbb\xbf" + json.dumps(v2()).encode(), "ok")
    yield c("empty", lambda: b"", "error")
    yield c("whitespace", lambda: b"   \n\t ", "error")
    yield c("not-json-text", lambda: b"hello world", "error")
    yield c("json-null", lambda: b"null", "error")
    yield c("json-array", lambda: b"[1,2]", "error")
    yield c("binary-garbage", lambda: random.Random(7).randbytes(4096), "error")
    yield c("name-empty", lambda: json.dumps(v2("  ")).encode(), "error")
    yield c("control-chars-everywhere", lambda: json.dumps(v2(
        "\x1b[2J\u202eevil", description="\x00\x07\x1b]0;title\x07[bold red]x[/]", first_mes="</s><|im_end|>",
    )).encode(), "ok")
    yield c("huge-field-20mb", lambda: json.dumps(v2(description="x" * 20 * MB)).encode(), "ok")
    yield c("100k-greetings", lambda: json.dumps(v2(alternate_greetings=["hi"] * 100_000)).encode(), "ok")
    yield c("many-unknown-keys", lambda: json.dumps(v2(**{f"k{i}": i for i in range(20_000)})).encode(), "ok")
    for i in range(12):
        seed = rng.randrange(1 << 30)
        yield c(f"bitflip#{i}", lambda seed=seed: flip_bits(json.dumps(v3(
            description="d", alternate_greetings=["a"], extensions={"x": [1, {"y": None}]},
        )).encode(), random.Random(seed), 1 + seed % 3))
    # File-level tricks: links and special files next to the card.
    yield Case("file/symlink-to-dev-zero", "card", "z.png", setup=_link_to("/dev/zero"), expect="error")
    yield Case("file/symlink-loop", "card", "loop.png", setup=_loop, expect="error")
    yield Case("file/fifo", "card", "fifo.png", setup=_fifo, expect="error")
    yield Case("file/folder", "card", "dir.png", setup=_folder, expect="error")
    yield Case("file/dangling-symlink", "card", "gone.png", setup=_link_to("/nonexistent/rpchat-card.png"),
               expect="error")


def _link_to(target: str) -> Callable[[Path], Path]:
    def setup(folder: Path) -> Path:
        path = folder / "link.png"
        path.symlink_to(target)
        return path

    return setup


def _loop(folder: Path) -> Path:
    (folder / "a.png").symlink_to(folder / "b.png")
    (folder / "b.png").symlink_to(folder / "a.png")
    return folder / "a.png"


def _fifo(folder: Path) -> Path:
    path = folder / "fifo.png"
    os.mkfifo(path)
    return path


def _folder(folder: Path) -> Path:
    path = folder / "dir.png"
    path.mkdir()
    return path


def card_cases(rng: random.Random) -> Iterator[Case]:
    """Every hostile card case, in a fixed order for a given ``rng`` seed."""
    yield from png_mutations(rng)
    yield from png_built()
    yield from json_cards(rng)
    from hostile_charx import charx_cases

    yield from charx_cases(rng)
