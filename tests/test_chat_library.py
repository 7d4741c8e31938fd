"""The chat library: per-character folders, SillyTavern-style names, listing, branches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rpchat.chat import (
    Chat,
    ChatStore,
    character_folder,
    latest_chat,
    list_chats,
    load_chat,
    new_chat_path,
    save_branch,
    save_chat,
)
from rpchat.filenames import safe_name
from rpchat.paths import profile


@pytest.mark.parametrize(
    "hostile",
    [
        "../../../etc/passwd",
        "..",
        ".",
        "/abs/path",
        "C:\\Windows\\evil",
        "a\x00b\x1b[31mred",
        "\u202egnp.exe",
        "NUL",
        "con.txt",
        "x" * 5000,
        "   ",
        "",
        ".hidden",
        "trailing. . .",
    ],
)
def test_hostile_names_stay_one_safe_part_inside_chats_dir(hostile: str) -> None:
    name = safe_name(hostile)
    assert name and len(name) <= 80 and len(name.encode()) <= 200
    assert "/" not in name and "\\" not in name and "\x00" not in name and "\x1b" not in name
    assert "\u202e" not in name and not name.startswith(".") and not name.endswith((".", " "))
    assert name.split(".")[0].upper() not in {"CON", "NUL", "PRN", "AUX"}
    folder = character_folder(hostile)
    assert folder.parent == profile().chats_dir
    path = new_chat_path(hostile)
    assert path.parent == folder and path.suffix == ".jsonl"


def test_ordinary_names_are_kept() -> None:
    assert safe_name("Seraphina") == "Seraphina"
    assert safe_name("Marisol (beach) ✿") == "Marisol (beach) ✿"
    assert safe_name("Dr. Who?") == "Dr. Who_"


def test_new_chat_path_is_sillytavern_style_and_unique() -> None:
    first = new_chat_path("Marisol")
    assert first.name.startswith("Marisol - ") and "@" in first.name and first.name.endswith("s.jsonl")
    save_chat(Chat.start("Marisol", "Theo", ["Hi."]), first)
    second = new_chat_path("Marisol")
    assert second != first and not second.exists()


def test_list_chats_newest_first_with_counts_previews_and_errors() -> None:
    folder = character_folder("Marisol")
    old = Chat.start("Marisol", "Theo", ["Old greeting."])
    old.add(True, "old   message\nwith lines")
    save_chat(old, folder / "a.jsonl")
    new = Chat.start("Marisol", "Theo", ["New greeting."])
    new.add(True, "x" * 500)
    save_chat(new, folder / "b.jsonl")
    (folder / "c.jsonl").write_bytes(b"garbage")
    (folder / "b.corrupt-20240501T123000.jsonl").write_bytes(b"garbage")
    (folder / "a.conflict-20240501T123000-2.jsonl").write_bytes(b"garbage")
    (folder / "notes.txt").write_text("not a chat")
    os.utime(folder / "a.jsonl", (1_000_000, 1_000_000))
    os.utime(folder / "c.jsonl", (500_000, 500_000))

    card = profile().cards_dir / "Marisol.png"
    entries = list_chats(card, "Marisol")
    assert [e.path.name for e in entries] == ["b.jsonl", "a.jsonl", "c.jsonl"]
    b, a, c = entries
    assert (b.turns, a.turns) == (2, 2)
    assert a.preview == "old message with lines"
    assert len(b.preview) <= 200 and b.preview.endswith("…")
    assert a.last_date == old.turns[-1].send_date
    assert c.error and c.turns == 0 and b.error is None
    assert latest_chat(card, "Marisol") == folder / "b.jsonl"
    nobody = profile().cards_dir / "Nobody.png"
    assert latest_chat(nobody, "Nobody") is None and list_chats(nobody, "Nobody") == []


def test_branch_is_a_new_file_linked_to_its_parent() -> None:
    parent_path = new_chat_path("Marisol")
    chat = Chat.start("Marisol", "Theo", ["Hi."])
    for i in range(4):
        chat.add(i % 2 == 0, f"turn {i + 1}")
    ChatStore(parent_path).save(chat)

    branch, store = save_branch(chat, 2, parent_path)
    assert store.path.parent == parent_path.parent and store.path != parent_path
    assert store.path.name.startswith("Branch #2 - ")
    loaded = load_chat(store.path)
    assert [t.text for t in loaded.turns] == ["Hi.", "turn 1", "turn 2"]
    link = loaded.settings["parent"]
    assert link["integrity"] == chat.metadata["integrity"] and link["turn"] == 2
    assert link["file"] == parent_path.name
    assert loaded.metadata["main_chat"] == parent_path.stem  # SillyTavern's back-to-parent link
    assert loaded.metadata["integrity"] != chat.metadata["integrity"]
    assert len(load_chat(parent_path).turns) == 5  # the parent is untouched
    branch.add(True, "diverges")
    store.save(branch)
    assert len(list_chats(profile().cards_dir / "Marisol.png", "Marisol")) == 2


def test_a_chat_with_bad_lines_is_listed_as_openable_with_the_count() -> None:
    folder = character_folder("Marisol")
    chat = Chat.start("Marisol", "Theo", ["Hi."])
    chat.add(True, "hello")
    save_chat(chat, folder / "a.jsonl")
    data = (folder / "a.jsonl").read_bytes()
    (folder / "a.jsonl").write_bytes(data.replace(b'\n{"name":"Theo"', b'\n{oops\n{"name":"Theo"'))
    (entry,) = list_chats(profile().cards_dir / "Marisol.png", "Marisol")
    assert entry.error is None and entry.bad_lines == 1 and entry.turns == 2


# --- chats follow their card --------------------------------------------------------------------


def _card(name: str, stem: str | None = None, nickname: str = "") -> Path:
    from rpchat.cards import Card, save_card

    path = profile().cards_dir / f"{stem or name}.png"
    save_card(Card(name=name, nickname=nickname, first_mes=f"Hello from {name}."), path)
    return path


def _chat_with(card: Path, text: str) -> Path:
    from rpchat.session import open_chat_session

    session = open_chat_session(card, None)
    session.chat.add(True, text)
    session.save()
    return session.path


def test_new_chats_go_to_the_folder_of_the_card_file() -> None:
    card = _card("Marisol", stem="marisol_vega")
    path = _chat_with(card, "hi")
    assert path.parent == profile().chats_dir / "marisol_vega"
    assert [e.path for e in list_chats(card)] == [path]


def test_renaming_a_card_renames_its_file_and_moves_its_chats() -> None:
    from rpchat.cards import load_card
    from rpchat.chat.library import save_edited_card

    card = _card("Seraphina")
    first, second = _chat_with(card, "one"), _chat_with(card, "two")
    before = load_card(card)
    from dataclasses import replace

    new = save_edited_card(replace(before, name="Luna"), before, card)
    assert new == profile().cards_dir / "Luna.png" and not card.exists()
    assert load_card(new).name == "Luna"
    listed = {e.path.name: load_chat(e.path) for e in list_chats(new)}
    assert set(listed) == {first.name, second.name}
    assert [t.text for t in listed[first.name].turns][-1] == "one"
    assert not (profile().chats_dir / "Seraphina").exists()
    # A card imported later under the old name is a new character: no chats of Luna's.
    again = _card("Seraphina")
    assert list_chats(again) == []


def test_a_rename_interrupted_at_any_step_leaves_every_chat_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from rpchat.cards import list_cards, load_card
    from rpchat.chat import library as chat_library
    from rpchat.chat.library import save_edited_card

    card = _card("Seraphina")
    chat = _chat_with(card, "keep me")

    def listed() -> set[Path]:
        return {e.path for c in list_cards() if not c.bundled for e in list_chats(c.path, c.name)}

    # A crash right after the new card file is written: the chats are still under the old card.
    def crash(*_: object) -> None:
        raise KeyboardInterrupt

    before = load_card(card)
    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(chat_library, "_move_chats", crash)
        save_edited_card(replace(before, name="Luna"), before, card)
    assert card.exists() and (profile().cards_dir / "Luna.png").exists()
    assert chat in listed()
    # A crash after the chats moved, before the old file went: they are under the new card.
    (profile().cards_dir / "Luna.png").unlink()
    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(Path, "unlink", crash)
        save_edited_card(replace(before, name="Luna"), before, card)
    assert card.exists()
    assert listed() == {profile().chats_dir / "Luna" / chat.name}


def test_a_duplicate_starts_with_no_chats_and_the_original_keeps_its_own() -> None:
    from rpchat.cards import duplicate_card, import_card

    card = _card("Seraphina")
    chat = _chat_with(card, "mine")
    copy = duplicate_card(card)
    assert list_chats(copy) == []
    assert [e.path for e in list_chats(card)] == [chat]
    # Nor does a card of another format with the same name: it may not share the original's folder.
    src = profile().data_dir / "seraphina.json"
    src.write_text('{"name": "Seraphina"}')
    twin = import_card(src)
    assert twin.suffix == ".json" and twin.stem not in (card.stem, copy.stem) and list_chats(twin) == []


def test_a_card_deleted_and_imported_again_finds_its_chats(tmp_path: Path) -> None:
    from rpchat.cards import delete_card, import_card

    card = _card("Seraphina")
    original = tmp_path / "download.png"
    original.write_bytes(card.read_bytes())
    chat = _chat_with(card, "remember me")
    delete_card(card)
    again = import_card(original)
    assert [e.path for e in list_chats(again)] == [chat]


def test_chats_filed_under_the_character_name_belong_to_that_card() -> None:
    # Older rpchat filed chats by display name; `rpchat chat import` files them by character name.
    card = _card("Marisol Vega", stem="marisol_vega", nickname="Mari")
    legacy = character_folder("Mari") / "old.jsonl"
    save_chat(Chat.start("Mari", "Theo", ["Hi."]), legacy)
    assert [e.path for e in list_chats(card)] == [legacy]
    # ...unless a card file of that name claims the folder as its own.
    _card("Someone", stem="Mari")
    assert list_chats(card) == []


def test_renaming_moves_chats_filed_under_the_old_name_too() -> None:
    from dataclasses import replace

    from rpchat.cards import load_card
    from rpchat.chat.library import save_edited_card

    card = _card("Marisol", stem="marisol_vega")
    legacy = character_folder("Marisol") / "old.jsonl"
    save_chat(Chat.start("Marisol", "Theo", ["Hi."]), legacy)
    own = _chat_with(card, "new")
    before = load_card(card)
    new = save_edited_card(replace(before, name="Maren"), before, card)
    assert {e.path.name for e in list_chats(new)} == {"old.jsonl", own.name}
    assert not legacy.exists()


def test_saving_an_edited_bundled_card_makes_a_new_character_without_chats() -> None:
    from dataclasses import replace

    from rpchat.cards import list_cards, load_card
    from rpchat.chat.library import save_edited_card

    bundled = next(e for e in list_cards() if e.bundled)
    chat = _chat_with(bundled.path, "with the bundled one")
    before = load_card(bundled.path)
    copy = save_edited_card(replace(before, description="My version."), before, bundled.path)
    assert copy.parent == profile().cards_dir and list_chats(copy) == []
    assert [e.path for e in list_chats(bundled.path)] == [chat]


def test_a_long_wide_character_name_still_fits_a_file_name() -> None:
    """100 four-byte characters were kept whole (400 bytes): more than a file system allows in one name."""
    path = new_chat_path("\U0001F600" * 100)
    save_chat(Chat.start("x", "Theo", ["Hi."]), path)
    assert path.is_file() and len(path.parent.name.encode()) <= 200 and len(path.name.encode()) <= 255


def test_chat_import_leaves_a_symlink_of_the_same_name_alone(tmp_path: Path) -> None:
    from rpchat.chat.library import import_st_chat

    src = tmp_path / "story.jsonl"
    save_chat(Chat.start("Marisol", "Theo", ["Hi."]), src)
    folder = tmp_path / "chats"
    folder.mkdir()
    (folder / "story.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")  # dangling
    target = import_st_chat(src, tmp_path, folder=folder)
    assert target == folder / "story (2).jsonl"
    assert (folder / "story.jsonl").is_symlink() and not (tmp_path / "elsewhere.jsonl").exists()
