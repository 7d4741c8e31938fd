"""World info attached to a chat: copied into the profile, remembered in the chat file, fired by keys."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from session_support import CARD_LORE, LORE, make_card, tiny_config, write_world

from rpchat.chat.store import load_chat
from rpchat.errors import ChatError, ConfigError
from rpchat.paths import profile
from rpchat.personas import PersonaBook
from rpchat.session import RoleplaySession, open_chat_session
from rpchat.worlds import load_world, world_path, worlds_dir


def open_new(home: Path, tiny_model: Path | None = None, **card_fields: object) -> RoleplaySession:
    config = tiny_config(tiny_model or home / "none.gguf")
    return open_chat_session(make_card(home, **card_fields), config=config, personas=PersonaBook())


def reopen(s: RoleplaySession) -> RoleplaySession:
    assert s.card_path is not None
    return open_chat_session(s.card_path, s.path, config=tiny_config(Path("none.gguf")), personas=PersonaBook())


def test_attached_world_fires_on_a_key_and_is_remembered(tmp_path: Path) -> None:
    (tmp_path / "downloads").mkdir()
    src = write_world(tmp_path / "downloads" / "gull.json")
    s = open_new(tmp_path)
    name = s.attach_world(src)
    # The chat holds a copy in the profile, not a reference to the original.
    assert (worlds_dir() / name).read_bytes() == src.read_bytes()
    assert worlds_dir().parent == profile().data_dir
    src.unlink()
    assert LORE not in s.build().text  # no key in the chat yet
    s.send("Who built the Lighthouse?")  # keys are case-insensitive by default
    built = s.build()
    assert LORE in built.text
    assert "kraken" not in built.text
    assert [(hit.book, hit.name) for hit in built.lore_fired] == [("Gull Island", "the lighthouse")]
    assert load_chat(s.path).settings["worlds"] == [name]

    again = reopen(s)
    assert again.worlds == [name]
    assert LORE in again.build().text
    assert again.take_notices() == []


def test_detach_removes_the_entry_and_keeps_the_file(tmp_path: Path) -> None:
    s = open_new(tmp_path)
    name = s.attach_world(write_world(tmp_path / "gull.json"))
    s.send("the lighthouse again")
    assert LORE in s.build().text
    s.detach_world(name.removesuffix(".json"))  # the name without .json works too
    assert LORE not in s.build().text
    assert load_chat(s.path).settings["worlds"] == []
    assert (worlds_dir() / name).exists()  # other chats may use it
    with pytest.raises(ChatError, match="no world"):
        s.detach_world(name)


def test_attaching_the_same_file_twice_keeps_one_copy(tmp_path: Path) -> None:
    s = open_new(tmp_path)
    src = write_world(tmp_path / "gull.json")
    first = s.attach_world(src)
    assert s.attach_world(src) == first
    assert s.worlds == [first]
    assert sorted(p.name for p in worlds_dir().iterdir()) == [first]
    other = s.attach_world(write_world(tmp_path / "reef.json", key="reef", content="The reef is sharp."))
    assert other != first and s.worlds == [first, other]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"{not json", "not a JSON lorebook"),
        (b'{"name": "x"}', "no 'entries'"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"[1, 2, 3]", "JSON object"),
    ],
)
def test_broken_world_is_a_clean_error_and_the_chat_is_unchanged(tmp_path: Path, content: bytes, needle: str) -> None:
    s = open_new(tmp_path)
    before = s.path.read_bytes()
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        s.attach_world(bad)
    message = str(err.value)
    assert needle in message and "bad.json" in message and "\n" not in message
    assert s.worlds == []
    assert s.path.read_bytes() == before
    assert not worlds_dir().exists() or not any(worlds_dir().iterdir())


def test_missing_or_broken_attached_world_is_one_notice_and_the_prompt_still_builds(tmp_path: Path) -> None:
    s = open_new(tmp_path)
    name = s.attach_world(write_world(tmp_path / "gull.json"))
    s.send("the lighthouse")
    (worlds_dir() / name).write_text("{broken", encoding="utf-8")
    text = s.build().text
    assert LORE not in text and "the lighthouse" in text
    notices = s.take_notices()
    assert len(notices) == 1 and name in notices[0] and "not a JSON lorebook" in notices[0]
    s.build()
    assert s.take_notices() == []  # reported once, not on every build
    (worlds_dir() / name).unlink()
    s.build()
    assert [n for n in s.take_notices() if "missing" in n]


def test_parsed_world_is_cached_until_the_file_changes(tmp_path: Path) -> None:
    s = open_new(tmp_path)
    name = s.attach_world(write_world(tmp_path / "gull.json"))
    first = load_world(name)
    assert load_world(name) is first
    path = world_path(name)
    write_world(path, content="Rebuilt in 1920 after the storm.")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert load_world(name) is not first
    assert load_world(name).entries[0].content == "Rebuilt in 1920 after the storm."


def test_a_hostile_world_name_in_the_chat_file_never_leaves_the_worlds_folder(tmp_path: Path) -> None:
    worlds_dir().mkdir(parents=True)
    write_world(worlds_dir().parent / "secret.json")  # a real world file, one folder up
    s = open_new(tmp_path)
    s.chat.settings["worlds"] = ["../secret.json", "/etc/passwd", 7]
    s.send("the lighthouse")
    assert LORE not in s.build().text
    assert len(s.take_notices()) == 2  # the non-string entry is ignored


def test_card_lorebook_toggle_is_remembered(tmp_path: Path) -> None:
    book = {"entries": [{"keys": ["cat"], "content": CARD_LORE, "enabled": True, "insertion_order": 0}]}
    s = open_new(tmp_path, character_book=book)
    s.send("Is that your cat?")
    assert s.use_card_lorebook and CARD_LORE in s.build().text
    s.set_card_lorebook(False)
    assert CARD_LORE not in s.build().text
    again = reopen(s)
    assert not again.use_card_lorebook and CARD_LORE not in again.build().text
    again.set_card_lorebook(True)
    assert CARD_LORE in again.build().text
    # `rpchat reply --no-lore` turns it off for one session only, without saving that.
    again.skip_card_lorebook = True
    assert CARD_LORE not in again.build().text
    assert load_chat(again.path).settings["use_card_lorebook"] is True


def test_branch_keeps_the_attached_worlds(tmp_path: Path) -> None:
    s = open_new(tmp_path)
    name = s.attach_world(write_world(tmp_path / "gull.json"))
    branched = s.branch(0)
    assert branched.path != s.path and branched.worlds == [name]
