"""The bundled cards and the generated avatars."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
from PIL import Image

from rpchat.cards import Card, load_card, save_card
from rpchat.cards.avatar import emblem_avatar, placeholder_avatar
from rpchat.errors import CardError
from rpchat.paths import bundled_dir

CARDS = sorted(p for p in bundled_dir("cards").iterdir() if p.suffix == ".png")


def colours(png: bytes) -> int:
    with Image.open(io.BytesIO(png)) as img:
        return len(img.convert("RGB").getcolors(1 << 20) or ())


def test_at_least_three_bundled_cards():
    assert len(CARDS) >= 3


@pytest.mark.parametrize("path", CARDS, ids=lambda p: p.name)
def test_bundled_card_loads_and_is_written_well(path):
    card = load_card(path)
    assert card.name and card.first_mes and card.description and card.personality and card.scenario
    words = sum(
        len(getattr(card, f).split()) for f in ("description", "personality", "scenario", "first_mes")
    )
    assert words >= 300
    text = " ".join([card.description, card.personality, card.scenario, card.first_mes, *card.greetings])
    assert "{{char}}" in text and "{{user}}" in text
    assert not re.search(r"\{\{(?!char\}\}|user\}\})", text)  # no other macros the builder won't know
    assert "\r" not in text
    assert colours(card.avatar) > 200  # a painted avatar, not a flat colour
    assert card.tags and card.creator_notes


def test_bundled_cards_cover_v2_greetings_v3_and_lorebook():
    cards = [load_card(p) for p in CARDS]
    assert any(c.spec == "chara_card_v2" and len(c.alternate_greetings) >= 2 for c in cards)
    v3 = [c for c in cards if c.spec == "chara_card_v3" and c.nickname]
    assert v3 and v3[0].group_only_greetings and v3[0].creator_notes_multilingual and v3[0].creation_date
    books = [c.character_book for c in cards if c.character_book]
    assert books
    entries = books[0]["entries"]
    assert len(entries) >= 5
    assert any(e["constant"] for e in entries) and any(
        e["selective"] and e["secondary_keys"] for e in entries
    )
    assert any(e["case_sensitive"] for e in entries)
    assert {e["position"] for e in entries} == {"before_char", "after_char"}
    for e in entries:
        assert {"keys", "content", "insertion_order", "extensions", "enabled"} <= set(e)


def test_bundled_cards_survive_a_round_trip(tmp_path):
    for path in CARDS:
        card = load_card(path)
        save_card(card, tmp_path / path.name)
        again = load_card(tmp_path / path.name)
        assert again.character_book == card.character_book
        assert again.alternate_greetings == card.alternate_greetings and again.avatar == card.avatar


def test_placeholder_is_deterministic_and_differs_by_name():
    a = placeholder_avatar("Alice")
    assert a == placeholder_avatar("Alice")
    assert a != placeholder_avatar("Bob")
    assert colours(a) > 10
    with Image.open(io.BytesIO(placeholder_avatar("x", size=64))) as img:
        assert img.size == (64, 64) and img.format == "PNG"


def test_placeholder_handles_any_name():
    for name in ["", "\ud800broken surrogate", "\U0001f600" * 300, "\x00\x1b[31m"]:
        assert placeholder_avatar(name).startswith(b"\x89PNG")


def test_emblems_are_deterministic():
    assert emblem_avatar("willow", "T", size=96) == emblem_avatar("willow", "T", size=96)
    with pytest.raises(ValueError):
        emblem_avatar("dragon", "T")


def test_unknown_format_is_refused(tmp_path):
    p = tmp_path / "card.txt"
    p.write_bytes(b"\x00\x01\x02 binary noise")
    with pytest.raises(CardError, match=r"card\.txt: not a character card"):
        load_card(p)


def test_oversized_file_is_refused(tmp_path):
    p = tmp_path / "huge.json"
    with open(p, "wb") as f:
        f.truncate(65 * 1024 * 1024)  # sparse: costs no disk
    with pytest.raises(CardError, match="larger than 64 MiB"):
        load_card(p)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX only")
def test_fifo_and_device_files_are_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(CardError, match="not a regular file"):
        load_card(tmp_path / "pipe.png")  # no writer: a plain open() would wait forever
    with pytest.raises(CardError, match="not a regular file"):
        load_card(Path("/dev/zero"))


def test_unencodable_text_is_a_card_error(tmp_path):
    # A lone surrogate cannot be written as UTF-8; saving must say so, not crash.
    with pytest.raises(CardError, match="cannot be written"):
        save_card(Card(name="bad \ud800 name"), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
