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
    safe_name,
    save_branch,
    save_chat,
)
from rpchat.paths import profile


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPCHAT_HOME", str(tmp_path / "home"))


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
    assert name and len(name) <= 100
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

    entries = list_chats("Marisol")
    assert [e.path.name for e in entries] == ["b.jsonl", "a.jsonl", "c.jsonl"]
    b, a, c = entries
    assert (b.turns, a.turns) == (2, 2)
    assert a.preview == "old message with lines"
    assert len(b.preview) <= 200 and b.preview.endswith("…")
    assert a.last_date == old.turns[-1].send_date
    assert c.error and c.turns == 0 and b.error is None
    assert latest_chat("Marisol") == folder / "b.jsonl"
    assert latest_chat("Nobody") is None and list_chats("Nobody") == []


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
    assert len(list_chats("Marisol")) == 2
