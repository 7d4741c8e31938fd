"""The card library: listing bundled and user cards, import, duplicate, delete, safe file names."""

from __future__ import annotations

import json
import os

import pytest

from rpchat.cards import (
    Card,
    delete_card,
    duplicate_card,
    import_card,
    list_cards,
    load_card,
    save_card,
)
from rpchat.errors import CardError
from rpchat.filenames import safe_name
from rpchat.paths import bundled_dir, profile


def test_lists_bundled_and_user_cards(tmp_path):
    save_card(Card(name="Zelda", tags=["a", "b"], creator_notes="notes"), profile().cards_dir / "z.png")
    save_card(Card(name="abel"), profile().cards_dir / "a.json")
    entries = list_cards()
    bundled = [e for e in entries if e.bundled]
    user = [e for e in entries if not e.bundled]
    assert len(bundled) >= 3 and all(e.path.parent == bundled_dir("cards") for e in bundled)
    assert [e.name for e in user] == ["abel", "Zelda"]  # sorted by name, case-insensitively
    zelda = user[1]
    assert (zelda.tags, zelda.creator_notes, zelda.error) == (("a", "b"), "notes", None)


def test_broken_and_foreign_files_in_folder(tmp_path):
    folder = profile().cards_dir
    folder.mkdir(parents=True)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    (folder / "notes.txt").write_text("not a card")
    (folder / ".tmp.png.123.tmp").write_bytes(b"partial")
    (folder / "sub.json").mkdir()
    entries = list_cards([(folder, False)])
    assert len(entries) == 1
    assert entries[0].name == "broken" and "truncated" in entries[0].error


def test_missing_folder_lists_nothing(tmp_path):
    assert list_cards([(tmp_path / "nope", False)]) == []


def test_import_keeps_bytes_and_picks_unique_safe_names(tmp_path):
    src = tmp_path / "download.png"
    save_card(Card(name="../../Evil/Name: <1>"), src)
    first = import_card(src)
    second = import_card(src)
    folder = profile().cards_dir
    assert first.parent == folder and second.parent == folder
    assert first.name == "_.._Evil_Name_ _1_.png"
    assert first != second and second.stem.endswith("(2)")
    assert first.read_bytes() == src.read_bytes()
    assert load_card(second).name == "../../Evil/Name: <1>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["download.png", "home"]


def test_import_uses_detected_format_for_extension(tmp_path):
    src = tmp_path / "card.bin"
    src.write_text(json.dumps({"name": "Jay"}))
    dest = import_card(src)
    assert dest.name == "Jay.json"


def test_import_refuses_broken_card(tmp_path):
    src = tmp_path / "bad.json"
    src.write_text('{"description": "nameless"}')
    with pytest.raises(CardError, match="no name"):
        import_card(src)
    assert not profile().cards_dir.exists() or list(profile().cards_dir.iterdir()) == []


def test_import_refuses_unknown_format(tmp_path):
    src = tmp_path / "x.txt"
    src.write_bytes(b"\x00\x01 random")
    with pytest.raises(CardError, match="not a character card"):
        import_card(src)


def test_duplicate_bundled_card_goes_to_user_folder():
    bundled = next(e for e in list_cards() if e.bundled)
    copy = duplicate_card(bundled.path)
    assert copy.parent == profile().cards_dir
    assert copy.read_bytes() == bundled.path.read_bytes()
    again = duplicate_card(copy)
    assert again != copy and load_card(again).name == load_card(copy).name


def test_delete_only_inside_user_folder(tmp_path):
    path = profile().cards_dir / "x.png"
    save_card(Card(name="X"), path)
    outside = tmp_path / "outside.png"
    save_card(Card(name="O"), outside)
    with pytest.raises(CardError, match="only cards in your cards folder"):
        delete_card(outside)
    bundled = next(e for e in list_cards() if e.bundled)
    with pytest.raises(CardError, match="only cards in your cards folder"):
        delete_card(bundled.path)
    assert outside.exists() and bundled.path.exists()
    delete_card(path)
    assert not path.exists()
    with pytest.raises(CardError, match="no such file"):
        delete_card(path)


def test_delete_refuses_symlink_and_traversal(tmp_path):
    folder = profile().cards_dir
    folder.mkdir(parents=True)
    target = tmp_path / "precious.png"
    save_card(Card(name="P"), target)
    os.symlink(target, folder / "link.png")
    with pytest.raises(CardError):
        delete_card(folder / "link.png")
    with pytest.raises(CardError):
        delete_card(folder / ".." / ".." / "precious.png")
    assert target.exists()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Seraphina", "Seraphina"),
        ('a/b\\c:d*e?f"g<h>i|j', "a_b_c_d_e_f_g_h_i_j"),
        ("..", "card"),
        ("   ", "card"),
        ("///", "card"),
        ("CON", "_CON"),
        ("nul.txt", "_nul.txt"),
        ("x\u202eevil\x00\n", "x_evil__"),
        ("Ren\u00e9e", "Ren\u00e9e"),
        ("lone \ud800 surrogate", "lone _ surrogate"),
    ],
)
def test_safe_filename(name, expected):
    assert safe_name(name, "card") == expected


def test_safe_filename_length_cap():
    stem = safe_name("\u96ea" * 500)
    assert len(stem) <= 80 and len(stem.encode()) <= 200
