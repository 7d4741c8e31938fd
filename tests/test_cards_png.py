"""PNG cards: chara/ccv3 chunks in tEXt, zTXt and iTXt, round trips, and every kind of broken file."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from rpchat.cards import Card, load_card, save_card
from rpchat.errors import CardError

FIXTURE = Path(__file__).parent / "fixtures" / "default_Seraphina.png"
SIG = b"\x89PNG\r\n\x1a\n"


def chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def image_png(colour=(200, 30, 60)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, format="PNG")
    return out.getvalue()


def split(png: bytes) -> list[tuple[bytes, bytes]]:
    """Chunks (type, data) of a well-formed PNG, parsed independently of rpchat."""
    pos, out = 8, []
    while pos < len(png):
        (n,) = struct.unpack(">I", png[pos : pos + 4])
        out.append((png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + n]))
        pos += 12 + n
    return out


def with_chunks(*extra: bytes, base: bytes | None = None) -> bytes:
    """A real PNG image with extra chunks inserted before IEND."""
    png = base or image_png()
    iend = png.rindex(b"IEND") - 4
    return png[:iend] + b"".join(extra) + png[iend:]


def b64json(obj) -> bytes:
    return base64.b64encode(json.dumps(obj).encode())


def v2(name="Alice", **data) -> dict:
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": name, **data}}


def text_chunk(keyword: str, payload: bytes) -> bytes:
    return chunk(b"tEXt", keyword.encode() + b"\0" + payload)


def write(tmp_path: Path, data: bytes, name="card.png") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


# --- reading ---------------------------------------------------------------------------------------


def test_seraphina_loads_with_crlf_text_and_lorebook():
    card = load_card(FIXTURE)
    assert card.name == "Seraphina"
    assert card.spec == "chara_card_v2"
    assert "\r\n" in card.description  # kept as-is; the prompt builder normalizes
    assert card.first_mes.startswith("*")
    assert card.character_book is not None and len(card.character_book["entries"]) == 4
    assert card.extensions["world"] == "Eldoria"
    assert card.outer["talkativeness"] == "0.5"  # SillyTavern's top-level V1 extras are kept
    assert card.avatar is not None and card.avatar.startswith(SIG)
    assert b"chara" not in card.avatar  # the avatar is the image without its card chunks
    with Image.open(io.BytesIO(card.avatar)) as img:
        assert img.size[0] > 100


def test_v1_chara_chunk(tmp_path):
    p = write(tmp_path, with_chunks(text_chunk("chara", b64json({"name": "Old", "first_mes": "Hi"}))))
    card = load_card(p)
    assert (card.name, card.first_mes, card.spec) == ("Old", "Hi", "chara_card_v1")


def test_ccv3_wins_over_chara(tmp_path):
    v3 = {"spec": "chara_card_v3", "spec_version": "3.0", "data": {"name": "Three", "nickname": "Tri"}}
    p = write(tmp_path, with_chunks(text_chunk("chara", b64json(v2("Two"))), text_chunk("ccv3", b64json(v3))))
    card = load_card(p)
    assert (card.name, card.nickname, card.spec) == ("Three", "Tri", "chara_card_v3")


def test_ztxt_chunk(tmp_path):
    data = b"chara\0\0" + zlib.compress(b64json(v2("Zed")))
    assert load_card(write(tmp_path, with_chunks(chunk(b"zTXt", data)))).name == "Zed"


@pytest.mark.parametrize("compressed", [False, True])
def test_itxt_chunk(tmp_path, compressed):
    text = b64json(v2("Itty", description="caf\u00e9"))
    body = zlib.compress(text) if compressed else text
    data = b"ccv3\0" + bytes([int(compressed), 0]) + b"en\0" + b"\0" + body
    card = load_card(write(tmp_path, with_chunks(chunk(b"iTXt", data))))
    assert (card.name, card.description) == ("Itty", "caf\u00e9")


def test_detected_by_content_not_extension(tmp_path):
    p = write(tmp_path, with_chunks(text_chunk("chara", b64json(v2("Hidden")))), name="card.json")
    assert load_card(p).name == "Hidden"


# --- writing and round trips -----------------------------------------------------------------------


DEEP_EXT = {"depth_prompt": {"prompt": "x", "depth": 4}, "vendor": {"a": [1, {"b": [None, True, 2.5]}]}}


def test_png_round_trip_loses_nothing(tmp_path):
    book = {"name": "B", "entries": [{"keys": ["k"], "content": "c", "extensions": {"x": {"y": 1}}}]}
    card = Card(
        name="Round",
        description="line1\r\nline2",
        alternate_greetings=["a", "b"],
        group_only_greetings=["g"],
        nickname="Roo",
        character_book=book,
        extensions=DEEP_EXT,
        unknown={"mystery": {"deep": [1, 2, {"z": "\u2603"}]}},
        outer={"chat": "Round - 2024", "fav": True},
        tags=["t1"],
        creation_date=1700000000,
        avatar=image_png(),
    )
    save_card(card, tmp_path / "r.png")
    first = load_card(tmp_path / "r.png")
    assert dataclasses.replace(first, spec=card.spec) == card
    save_card(first, tmp_path / "r2.png")
    assert load_card(tmp_path / "r2.png") == first


def test_seraphina_round_trip_keeps_everything(tmp_path):
    card = load_card(FIXTURE)
    save_card(card, tmp_path / "s.png")
    again = load_card(tmp_path / "s.png")
    assert dataclasses.replace(again, spec=card.spec) == card
    assert again.outer == card.outer and again.character_book == card.character_book


def test_written_png_has_both_chunks_and_keeps_other_chunks(tmp_path):
    private = chunk(b"rpTe", b"private ancillary data")
    old_card = text_chunk("chara", b64json(v2("Before")))
    src = write(tmp_path, with_chunks(private, old_card, chunk(b"tEXt", b"Comment\0hello")))
    card = load_card(src)
    card.name = "After"
    save_card(card, tmp_path / "out.png")
    chunks = split((tmp_path / "out.png").read_bytes())
    types = [t for t, _ in chunks]
    assert types[0] == b"IHDR" and types[-1] == b"IEND"
    assert (b"rpTe", b"private ancillary data") in chunks
    assert (b"tEXt", b"Comment\0hello") in chunks
    texts = {d.split(b"\0", 1)[0]: d.split(b"\0", 1)[1] for t, d in chunks if t == b"tEXt"}
    chara = json.loads(base64.b64decode(texts[b"chara"]))
    ccv3 = json.loads(base64.b64decode(texts[b"ccv3"]))
    assert chara["spec"] == "chara_card_v2" and chara["data"]["name"] == "After"
    assert chara["name"] == "After"  # V1 fields on top, as SillyTavern writes them
    assert ccv3["spec"] == "chara_card_v3" and ccv3["spec_version"] == "3.0"
    assert sum(1 for t, d in chunks if t == b"tEXt" and d.startswith((b"chara\0", b"ccv3\0"))) == 2
    # The pixels are untouched.
    idat = [d for t, d in split(src.read_bytes()) if t == b"IDAT"]
    assert [d for t, d in chunks if t == b"IDAT"] == idat


def test_card_without_avatar_gets_placeholder(tmp_path):
    save_card(Card(name="Nobody"), tmp_path / "n.png")
    card = load_card(tmp_path / "n.png")
    with Image.open(io.BytesIO(card.avatar)) as img:
        assert img.size == (256, 256)
        assert len(img.convert("RGB").getcolors(1 << 16) or ()) > 10  # a drawing, not a flat colour


def test_jpeg_avatar_is_converted(tmp_path):
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(out, format="JPEG")
    save_card(Card(name="Jay", avatar=out.getvalue()), tmp_path / "j.png")
    card = load_card(tmp_path / "j.png")
    assert card.name == "Jay" and card.avatar.startswith(SIG)


def test_unknown_extension_refused(tmp_path):
    with pytest.raises(CardError, match=r"\.txt"):
        save_card(Card(name="X"), tmp_path / "x.txt")
    assert not (tmp_path / "x.txt").exists()


# --- bad input -------------------------------------------------------------------------------------


def good_png() -> bytes:
    return with_chunks(text_chunk("chara", b64json(v2("Good"))))


def expect(tmp_path, data: bytes, pattern: str, name="bad.png") -> CardError:
    p = write(tmp_path, data, name)
    with pytest.raises(CardError, match=pattern) as info:
        load_card(p)
    message = str(info.value)
    assert str(p) in message and "\n" not in message
    return info.value


def test_not_a_png(tmp_path):
    expect(tmp_path, b"GIF89a not a png at all", "not a PNG")


def test_empty_file(tmp_path):
    expect(tmp_path, b"", "not a PNG")


def test_truncated(tmp_path):
    data = good_png()
    expect(tmp_path, data[: len(data) // 2], "truncated")
    expect(tmp_path, data[:-12], "truncated")  # IEND cut off


def test_length_past_end(tmp_path):
    data = good_png()
    forged = data[:8] + struct.pack(">I", 0x7FFFFFFF) + data[12:]
    expect(tmp_path, forged, "truncated")


def test_bad_crc(tmp_path):
    data = bytearray(good_png())
    data[data.index(b"IDAT") + 6] ^= 0xFF
    expect(tmp_path, bytes(data), "bad CRC in PNG chunk IDAT")


def test_no_card_chunk(tmp_path):
    expect(tmp_path, with_chunks(chunk(b"tEXt", b"Comment\0hi")), "no character data")


def test_bad_base64(tmp_path):
    expect(tmp_path, with_chunks(text_chunk("chara", b"eyJuYW1lIjo*@@junk!!")), "base64")


def test_bad_utf8(tmp_path):
    expect(tmp_path, with_chunks(text_chunk("chara", base64.b64encode(b'{"name": "\xff\xfe"}'))), "UTF-8")


def test_bad_json(tmp_path):
    expect(tmp_path, with_chunks(text_chunk("chara", base64.b64encode(b'{"name": "x",'))), "bad JSON")


def test_missing_name(tmp_path):
    expect(tmp_path, with_chunks(text_chunk("chara", b64json(v2(None)))), "no name")


def test_name_as_list(tmp_path):
    expect(tmp_path, with_chunks(text_chunk("chara", b64json(v2(["a", "b"])))), "'name' is a list")


def test_greetings_as_number(tmp_path):
    bad = v2("N", alternate_greetings=5)
    expect(tmp_path, with_chunks(text_chunk("chara", b64json(bad))), "'alternate_greetings' is a number")


def test_compressed_chunk_bomb(tmp_path):
    # ~2 GiB of zeros would inflate from this; the reader must stop at its cap without allocating it.
    # Full flushes make each 1 MiB block compress to the same byte-aligned run, which can be repeated.
    deflater = zlib.compressobj(9)
    block = b"\0" * (1 << 20)
    head = deflater.compress(block) + deflater.flush(zlib.Z_FULL_FLUSH)
    unit = deflater.compress(block) + deflater.flush(zlib.Z_FULL_FLUSH)
    bomb = head + unit * 2047
    assert len(bomb) < 4 * 1024 * 1024
    expect(tmp_path, with_chunks(chunk(b"zTXt", b"chara\0\0" + bomb)), "inflates past")
    itxt = b"ccv3\0\x01\x00\0\0" + bomb
    expect(tmp_path, with_chunks(chunk(b"iTXt", itxt)), "inflates past")


def test_huge_text_chunk(tmp_path):
    big = b"A" * (17 * 1024 * 1024)
    expect(tmp_path, with_chunks(text_chunk("chara", big)), "too large")


def test_corrupt_compressed_chunk(tmp_path):
    expect(tmp_path, with_chunks(chunk(b"zTXt", b"chara\0\0not zlib data")), "corrupt compressed")


def test_json_nested_10000_deep(tmp_path):
    payload = base64.b64encode(b'{"name": "x", "data": ' + b"[" * 10000 + b"]" * 10000 + b"}")
    expect(tmp_path, with_chunks(text_chunk("chara", payload)), "nested")


def test_broken_ccv3_is_not_hidden_by_good_chara(tmp_path):
    data = with_chunks(text_chunk("chara", b64json(v2("Fine"))), text_chunk("ccv3", b"%%%"))
    expect(tmp_path, data, "ccv3 chunk is not valid base64")


def test_folder_and_missing_file(tmp_path):
    with pytest.raises(CardError, match="folder"):
        load_card(tmp_path)
    with pytest.raises(CardError, match="no such card file"):
        load_card(tmp_path / "missing.png")


def test_bit_flips_never_raise_other_errors(tmp_path):
    data = good_png()
    for i in range(0, len(data), max(1, len(data) // 60)):
        flipped = bytearray(data)
        flipped[i] ^= 0x5A
        p = write(tmp_path, bytes(flipped), f"f{i}.png")
        try:
            card = load_card(p)
        except CardError as e:
            assert str(p) in str(e)
        else:
            assert isinstance(card.name, str)
