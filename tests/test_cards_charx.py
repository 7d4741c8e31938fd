"""CharX cards: card.json plus assets in a zip, read in memory; unsafe archives are refused."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from rpchat.cards import Card, load_card, save_card
from rpchat.errors import CardError


def webp_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (12, 12), (10, 200, 90)).save(out, format="WEBP")
    return out.getvalue()


def v3(**data) -> bytes:
    return json.dumps(
        {"spec": "chara_card_v3", "spec_version": "3.0", "data": {"name": "Zip", **data}}
    ).encode()


def make_charx(
    tmp_path: Path, members: dict[str, bytes], name="card.charx", attrs: dict | None = None
) -> Path:
    p = tmp_path / name
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for member, data in members.items():
            info = zipfile.ZipInfo(member)
            info.compress_type = zipfile.ZIP_DEFLATED
            if attrs and member in attrs:
                info.create_system = 3
                info.external_attr = attrs[member] << 16
            zf.writestr(info, data)
    return p


ICON = {"type": "icon", "uri": "embeded://assets/icon/images/face.webp", "name": "main", "ext": "webp"}


def test_reads_card_json_and_icon_asset(tmp_path):
    bg = {"type": "background", "uri": "embeded://assets/bg/night.png", "name": "bg", "ext": "png"}
    image = webp_bytes()
    p = make_charx(
        tmp_path,
        {
            "card.json": v3(
                nickname="Zippy", assets=[bg, ICON, {**ICON, "uri": "embeded://assets/other.png"}]
            ),
            "assets/icon/images/face.webp": image,
            "assets/bg/night.png": b"background bytes",
            "assets/other.png": b"second icon",
            "module.risum": b"\x00\x01binary",
        },
    )
    card = load_card(p)
    assert (card.name, card.nickname, card.spec) == ("Zip", "Zippy", "chara_card_v3")
    assert card.avatar == image  # the first icon asset, not the background and not the second icon
    assert card.embedded == {
        "assets/bg/night.png": b"background bytes",
        "assets/other.png": b"second icon",
        "module.risum": b"\x00\x01binary",
    }


def test_charx_round_trip_loses_nothing(tmp_path):
    deep = {"a": {"b": [{"c": {"d": [1, None, "\u2603"]}}]}}
    p = make_charx(
        tmp_path,
        {
            "card.json": v3(
                assets=[ICON],
                extensions={"deep": deep},
                alternate_greetings=["x", "y"],
                group_only_greetings=["g"],
                risu_unknown=deep,
                character_book={"entries": [{"keys": ["k"], "content": "v", "extensions": deep}]},
            ),
            "assets/icon/images/face.webp": webp_bytes(),
            "x_meta/1.json": b"{}",
        },
    )
    card = load_card(p)
    assert card.unknown == {"risu_unknown": deep}
    save_card(card, tmp_path / "again.charx")
    again = load_card(tmp_path / "again.charx")
    assert again == card
    with zipfile.ZipFile(tmp_path / "again.charx") as zf:
        assert sorted(zf.namelist()) == ["assets/icon/images/face.webp", "card.json", "x_meta/1.json"]


def test_card_from_png_written_as_charx_gets_icon(tmp_path):
    card = Card(name="Pic", extensions={"k": {"v": [1]}})
    save_card(card, tmp_path / "pic.charx")
    with zipfile.ZipFile(tmp_path / "pic.charx") as zf:
        doc = json.loads(zf.read("card.json"))
        assert doc["spec"] == "chara_card_v3"
        icon = doc["data"]["assets"][0]
        assert icon["type"] == "icon" and icon["uri"] == "embeded://assets/icon/images/main.png"
        assert zf.read("assets/icon/images/main.png").startswith(b"\x89PNG")
    back = load_card(tmp_path / "pic.charx")
    assert back.extensions == {"k": {"v": [1]}} and back.avatar.startswith(b"\x89PNG")
    # Saving the same card twice gives the same bytes (no timestamps inside).
    save_card(back, tmp_path / "a.charx")
    save_card(back, tmp_path / "b.charx")
    assert (tmp_path / "a.charx").read_bytes() == (tmp_path / "b.charx").read_bytes()


def test_charx_to_png_converts_webp_icon(tmp_path):
    p = make_charx(tmp_path, {"card.json": v3(assets=[ICON]), "assets/icon/images/face.webp": webp_bytes()})
    save_card(load_card(p), tmp_path / "out.png")
    card = load_card(tmp_path / "out.png")
    assert card.name == "Zip" and card.avatar.startswith(b"\x89PNG")


def test_icon_missing_from_archive_means_no_avatar(tmp_path):
    p = make_charx(tmp_path, {"card.json": v3(assets=[ICON])})
    assert load_card(p).avatar is None


# --- hostile archives ------------------------------------------------------------------------------


def expect(p: Path, pattern: str) -> None:
    before = sorted(os.listdir(p.parent))
    with pytest.raises(CardError, match=pattern) as info:
        load_card(p)
    assert str(info.value).startswith(f"{p}: ") and "\n" not in str(info.value)
    assert sorted(os.listdir(p.parent)) == before  # nothing extracted or written


@pytest.mark.parametrize(
    "name",
    [
        "../evil.txt",
        "assets/../../evil.txt",
        "/etc/evil",
        "C:/evil.txt",
        "assets\\..\\evil.txt",
        "./card.json",
    ],
)
def test_unsafe_member_paths(tmp_path, name):
    p = make_charx(tmp_path, {"card.json": v3(), name: b"pwned"})
    expect(p, "unsafe path")
    assert not (tmp_path.parent / "evil.txt").exists()


def test_unsafe_icon_uri(tmp_path):
    icon = {**ICON, "uri": "embeded://../../outside.png"}
    expect(make_charx(tmp_path, {"card.json": v3(assets=[icon])}), "unsafe path")


def test_symlink_member(tmp_path):
    p = make_charx(
        tmp_path, {"card.json": v3(), "assets/link": b"/etc/passwd"}, attrs={"assets/link": 0o120777}
    )
    expect(p, "symbolic link")


def test_zip_bomb(tmp_path):
    p = make_charx(tmp_path, {"card.json": v3(), "assets/bomb.bin": b"\0" * (70 * 1024 * 1024)})
    assert p.stat().st_size < 1024 * 1024
    expect(p, "zip bomb")


def test_card_json_bomb(tmp_path):
    p = make_charx(tmp_path, {"card.json": b" " * (17 * 1024 * 1024)})
    expect(p, "card.json' inflates past")


def test_no_card_json(tmp_path):
    expect(make_charx(tmp_path, {"assets/a.png": b"x"}), "no card.json")


def test_duplicate_members(tmp_path):
    p = tmp_path / "dup.charx"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("card.json", v3())
        with pytest.warns(UserWarning):
            zf.writestr("card.json", v3(name="Other"))
    expect(p, "two members")


def test_bad_card_json_inside(tmp_path):
    expect(make_charx(tmp_path, {"card.json": b"{not json"}), "bad JSON")
    expect(make_charx(tmp_path, {"card.json": v3(name=["list"])}, name="b.charx"), "'name' is a list")


def test_truncated_and_corrupt_zip(tmp_path):
    good = make_charx(tmp_path, {"card.json": v3(description="x" * 5000)}).read_bytes()
    (tmp_path / "t.charx").write_bytes(good[: len(good) // 2])
    expect(tmp_path / "t.charx", "CharX")
    corrupt = bytearray(good)
    start = good.index(b"card.json") + 20
    for i in range(start, start + 40):
        corrupt[i] ^= 0xFF
    (tmp_path / "c.charx").write_bytes(bytes(corrupt))
    expect(tmp_path / "c.charx", "CharX")


def test_not_a_zip(tmp_path):
    (tmp_path / "x.charx").write_bytes(b"hello there")
    expect(tmp_path / "x.charx", "not a CharX")


def test_encrypted_member_is_card_error(tmp_path):
    p = make_charx(tmp_path, {"card.json": v3()})
    raw = bytearray(p.read_bytes())
    # Set the "encrypted" flag bit in the local and central headers.
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = raw.index(sig)
        raw[i + off] |= 1
    p.write_bytes(bytes(raw))
    expect(p, "CharX")
