"""Property tests for the card parsers (PNG chunks, CharX archives, V2/V3 fields), beyond the JSON-file
properties in test_cards_json.py: any card survives PNG and CharX round trips; mutated or made-up PNGs
and archives load or raise a one-line CardError; no archive member name that loads can escape a folder."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpchat.cards import Card, card_bytes, card_from_dict, card_to_dict, load_card, save_card
from rpchat.cards.jsoncard import KNOWN_FIELDS, STRING_FIELDS, STRING_LIST_FIELDS
from rpchat.errors import CardError

SIG = b"\x89PNG\r\n\x1a\n"
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Any text but lone surrogates (not text at all): controls, \r\n, bidi overrides, markup, NUL.
texts = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40)
names = texts.filter(lambda s: s.strip())
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=10,
)
books = st.none() | st.fixed_dictionaries(
    {"entries": st.lists(st.fixed_dictionaries({
        "keys": st.lists(texts, max_size=3), "content": texts, "enabled": st.booleans(),
        "insertion_order": st.integers(0, 1000), "extensions": st.dictionaries(texts, json_values, max_size=2),
    }), max_size=3)},
    optional={"name": texts, "scan_depth": st.integers(0, 100), "extensions": st.dictionaries(texts, json_values,
                                                                                               max_size=2)},
)


@st.composite
def cards(draw: st.DrawFn) -> Card:
    card = Card(name=draw(names), spec=draw(st.sampled_from(["chara_card_v2", "chara_card_v3"])))
    for key in STRING_FIELDS[1:]:
        setattr(card, key, draw(texts))
    for key in STRING_LIST_FIELDS:
        setattr(card, key, draw(st.lists(texts, max_size=3)))
    card.extensions = draw(st.dictionaries(texts, json_values, max_size=3))
    card.character_book = draw(books)
    card.creator_notes_multilingual = draw(st.dictionaries(texts, texts, max_size=2))
    card.creation_date = draw(st.none() | st.integers(0, 2**40))
    card.modification_date = draw(st.none() | st.integers(0, 2**40))
    unknown = draw(st.dictionaries(texts, json_values, max_size=3))
    card.unknown = {k: v for k, v in unknown.items() if k not in KNOWN_FIELDS}
    return card


def same(loaded: Card, card: Card, **ignore: Any) -> bool:
    """Equal apart from the avatar, the spec the file was read as, and the ``ignore`` fields."""
    ignore = {"avatar": None, **ignore}
    return dataclasses.replace(loaded, **{"spec": card.spec, **ignore}) == dataclasses.replace(card, **ignore)


@settings(FUZZ, max_examples=40)
@given(cards())
def test_any_card_survives_png_round_trips_byte_stably(card: Card) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.png"
        save_card(card, path)
        loaded = load_card(path)
        assert same(loaded, card)
        assert loaded.spec == "chara_card_v3"  # ccv3 wins over chara
        # Saving what was loaded changes no byte: the avatar and both chunks come back the same.
        assert card_bytes(loaded, ".png") == path.read_bytes()


safe_segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=8)
embedded = st.dictionaries(
    st.lists(safe_segment, min_size=1, max_size=3).map(lambda parts: "assets/other/" + "/".join(parts)),
    st.binary(max_size=64), max_size=3,
)


@settings(FUZZ, max_examples=40)
@given(cards(), embedded)
def test_any_card_survives_a_charx_round_trip(card: Card, files: dict[str, bytes]) -> None:
    # A file and a folder of the same name cannot both be in an archive.
    files = {k: v for k, v in files.items() if not any(o.startswith(k + "/") for o in files)}
    card.embedded = files
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.charx"
        save_card(card, path)
        loaded = load_card(path)
        # Writing adds the avatar as the icon asset; everything else comes back as it was.
        assert [a for a in loaded.assets if a.get("type") != "icon"] == [
            a for a in card.assets if a.get("type") != "icon"]
        assert same(loaded, card, assets=[])
        assert loaded.avatar  # the placeholder avatar was written and read back


# --- made-up and mutated PNGs ----------------------------------------------------------------------------


def chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(ctype)))


def fix_crcs(raw: bytes) -> bytes:
    """Recompute the CRC of every chunk whose length stays inside the file, so the parser goes deeper."""
    out = bytearray(raw)
    pos = len(SIG)
    while pos + 12 <= len(out):
        (length,) = struct.unpack_from(">I", out, pos)
        end = pos + 8 + length
        if end + 4 > len(out):
            break
        struct.pack_into(">I", out, end, zlib.crc32(bytes(out[pos + 8 : end]), zlib.crc32(bytes(out[pos + 4 : pos + 8]))))
        pos = end + 4
    return bytes(out)


def base_png() -> bytes:
    card = Card(name="Fuzz", description="d", alternate_greetings=["a"], extensions={"x": [1]},
                character_book={"entries": [{"keys": ["k"], "content": "c"}]})
    return card_bytes(card, ".png")


BASE_PNG = base_png()


def expect_card_or_card_error(raw: bytes, suffix: str = ".png") -> Card | None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"fuzz{suffix}"
        path.write_bytes(raw)
        try:
            card = load_card(path)
        except CardError as e:
            message = str(e)
            assert "\n" not in message and "\r" not in message and str(path) in message
            return None
        assert isinstance(card.name, str) and card.name.strip()
        assert all(isinstance(getattr(card, k), str) for k in STRING_FIELDS)
        assert all(isinstance(x, str) for k in STRING_LIST_FIELDS for x in getattr(card, k))
        # Whatever loads can be written again and loads the same.
        again = Path(d) / "again.json"
        save_card(card, again)
        assert same(load_card(again), card, embedded={}, assets=[])  # JSON holds no files
        return card


edits = st.lists(
    st.tuples(st.sampled_from(["set", "insert", "delete"]), st.integers(0, 2**32), st.integers(0, 255)),
    min_size=1, max_size=6,
)


@settings(FUZZ, max_examples=150)
@given(edits, st.booleans(), st.one_of(st.none(), st.integers(0, 2**32)))
def test_mutated_png_cards_load_or_raise_card_error(ops: list[tuple[str, int, int]], repair: bool,
                                                    cut: int | None) -> None:
    raw = bytearray(BASE_PNG)
    for op, where, value in ops:
        i = where % (len(raw) + 1)
        if op == "set" and i < len(raw):
            raw[i] = value
        elif op == "insert":
            raw[i:i] = bytes([value])
        elif op == "delete" and i < len(raw):
            del raw[i]
    data = bytes(raw if cut is None else raw[: cut % (len(raw) + 1)])
    expect_card_or_card_error(fix_crcs(data) if repair else data)


def card_payloads() -> st.SearchStrategy[bytes]:
    docs = st.one_of(
        json_values,
        st.fixed_dictionaries({"spec": st.sampled_from(["chara_card_v2", "chara_card_v3", "x"]),
                               "data": st.dictionaries(st.sampled_from(sorted(KNOWN_FIELDS)), json_values,
                                                       max_size=6)}),
        st.dictionaries(st.sampled_from(["name", "first_mes", "description", "tags", "data"]), json_values,
                        max_size=4),
    )
    as_json = docs.map(lambda d: json.dumps(d).encode())
    return st.one_of(as_json.map(base64.b64encode), as_json, st.binary(max_size=80))


@st.composite
def text_chunks(draw: st.DrawFn) -> bytes:
    keyword = draw(st.sampled_from([b"chara", b"ccv3", b"CHARA", b"Comment", b""]))
    payload = draw(card_payloads())
    kind = draw(st.sampled_from([b"tEXt", b"zTXt", b"iTXt"]))
    if kind == b"tEXt":
        return chunk(kind, keyword + b"\0" + payload)
    if kind == b"zTXt":
        body = zlib.compress(payload) if draw(st.booleans()) else payload
        return chunk(kind, keyword + b"\0" + bytes([draw(st.sampled_from([0, 0, 1]))]) + body)
    compressed = draw(st.booleans())
    body = zlib.compress(payload) if compressed else payload
    return chunk(kind, keyword + b"\0" + bytes([compressed, 0]) + b"en\0\0" + body)


other_chunks = st.builds(chunk, st.sampled_from([b"IHDR", b"IDAT", b"PLTE", b"zzzz", b"eXIf"]), st.binary(max_size=40))


@settings(FUZZ, max_examples=150)
@given(st.lists(st.one_of(text_chunks(), other_chunks), max_size=6), st.booleans())
def test_made_up_png_chunk_sequences_load_or_raise_card_error(chunks: list[bytes], iend: bool) -> None:
    expect_card_or_card_error(SIG + b"".join(chunks) + (chunk(b"IEND", b"") if iend else b""))


# --- CharX archives and card dicts ------------------------------------------------------------------------


@settings(FUZZ, max_examples=80)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=24), st.binary(max_size=16)), max_size=5),
       card_payloads())
def test_charx_member_names_that_load_cannot_escape_a_folder(members: list[tuple[str, bytes]], card_json: bytes) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("card.json", card_json if card_json.lstrip()[:1] == b"{" else json.dumps({"name": "Z"}))
        written = {"card.json"}
        for name, data in members:
            if name in written:
                continue
            written.add(name)
            try:
                zf.writestr(name, data)
            except (ValueError, UnicodeEncodeError, IndexError):
                continue  # zipfile itself refuses some names (and trips over a name that is only NUL)
    card = expect_card_or_card_error(out.getvalue(), ".charx")
    for name in card.embedded if card else ():
        parts = name.split("/")
        assert not name.startswith("/") and "\\" not in name and "\0" not in name
        assert ".." not in parts and ":" not in parts[0]


@settings(FUZZ, max_examples=200)
@given(st.sampled_from(["chara_card_v2", "chara_card_v3", None]),
       st.dictionaries(st.sampled_from(sorted(KNOWN_FIELDS)), json_values, max_size=8), names)
def test_card_fields_of_any_type_load_with_right_types_or_raise_card_error(spec: str | None,
                                                                           fields: dict[str, Any],
                                                                           name: str) -> None:
    fields.setdefault("name", name)
    doc = {"spec": spec, "data": fields} if spec else fields
    try:
        card = card_from_dict(doc, "fuzz.json")
    except CardError as e:
        assert "\n" not in str(e) and str(e).startswith("fuzz.json: ")
        return
    assert all(isinstance(getattr(card, k), str) for k in STRING_FIELDS)
    assert all(isinstance(getattr(card, k), list) for k in STRING_LIST_FIELDS)
    assert isinstance(card.extensions, dict) and isinstance(card.assets, list)
    assert card.character_book is None or isinstance(card.character_book, dict)
    back = card_from_dict(card_to_dict(card, "chara_card_v3"), "again.json")
    assert dataclasses.replace(back, spec=card.spec, outer=card.outer) == card
