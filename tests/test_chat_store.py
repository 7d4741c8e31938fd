"""Chat files: SillyTavern JSONL round trips, import/export, and every kind of bad file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rpchat.chat import (
    Chat,
    ChatStore,
    dump_chat,
    export_st_chat,
    import_st_chat,
    load_chat,
    save_chat,
)
from rpchat.chat import store as store_module
from rpchat.errors import ChatError

# Written by hand the way SillyTavern 1.12 writes a chat: compact JSON, "\n" between lines and
# none at the end, \r\n inside card text, swipe_info, gen_started, force_avatar, chat_metadata keys.
ST_LINES = [
    {
        "user_name": "User",
        "character_name": "Seraphina",
        "create_date": "2024-05-01@12h30m00s",
        "chat_metadata": {
            "integrity": "5f0b9c8e-3c1a-4b0e-9a51-0d3b6f7c2a11",
            "chat_id_hash": 874512369,
            "note_prompt": "",
            "note_interval": 1,
            "note_position": 1,
            "note_depth": 4,
            "timedWorldInfo": {"sticky": {}, "cooldown": {}},
            "variables": {"mood": "calm"},
        },
    },
    {
        "name": "Seraphina",
        "is_user": False,
        "is_system": False,
        "send_date": "May 1, 2024 12:30pm",
        "mes": "*Seraphina smiles.*\r\nYou're awake.",
        "extra": {},
        "swipe_id": 1,
        "swipes": ["*A first greeting.*", "*Seraphina smiles.*\r\nYou're awake."],
        "swipe_info": [],
    },
    {
        "name": "User",
        "is_user": True,
        "is_system": False,
        "send_date": "May 1, 2024 12:31pm",
        "mes": "Where am I? </s><|im_end|>",
        "extra": {"isSmallSys": False},
        "force_avatar": "User Avatars/user-default.png",
    },
    {
        "name": "Seraphina",
        "is_user": False,
        "is_system": False,
        "send_date": "May 1, 2024 12:31pm",
        "mes": "In the Glade. \u2028 ünïcödé 🌲",
        "gen_started": "2024-05-01T12:31:02.123Z",
        "gen_finished": "2024-05-01T12:31:10.456Z",
        "extra": {"api": "textgenerationwebui", "model": "LimaRP-7B.gguf", "token_count": 12},
        "swipe_id": 0,
        "swipes": ["In the Glade. \u2028 ünïcödé 🌲"],
        "swipe_info": [
            {
                "send_date": "May 1, 2024 12:31pm",
                "gen_started": "2024-05-01T12:31:02.123Z",
                "gen_finished": "2024-05-01T12:31:10.456Z",
                "extra": {"api": "textgenerationwebui"},
            }
        ],
    },
    {
        "name": "Narrator",
        "is_user": False,
        "is_system": True,
        "send_date": "May 1, 2024 12:32pm",
        "mes": "A hidden note.",
        "extra": {"type": "narrator"},
    },
]


def st_bytes(objs: list[object]) -> bytes:
    return "\n".join(json.dumps(o, ensure_ascii=False, separators=(",", ":")) for o in objs).encode()


def write(tmp_path: Path, data: bytes, name: str = "chat.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_st_file_loads_with_every_field(tmp_path: Path) -> None:
    chat = load_chat(write(tmp_path, st_bytes(ST_LINES)))
    assert (chat.user_name, chat.character_name) == ("User", "Seraphina")
    assert chat.create_date == "2024-05-01@12h30m00s"
    assert chat.metadata["integrity"] == "5f0b9c8e-3c1a-4b0e-9a51-0d3b6f7c2a11"
    assert chat.warnings == []
    greeting, user, reply, note = chat.turns
    assert greeting.swipe_id == 1 and greeting.text == "*Seraphina smiles.*\r\nYou're awake."
    assert len(greeting.swipes) == 2
    assert user.is_user and user.swipes == ["Where am I? </s><|im_end|>"]
    assert user.unknown["force_avatar"] == "User Avatars/user-default.png"
    assert reply.unknown["gen_started"] == "2024-05-01T12:31:02.123Z"
    assert reply.swipe_info[0]["gen_finished"] == "2024-05-01T12:31:10.456Z"
    assert "\u2028" in reply.text  # a line separator inside a string is not a line break
    assert note.hidden and not reply.hidden


def test_st_file_rewrites_to_the_same_json_lines(tmp_path: Path) -> None:
    src = write(tmp_path, st_bytes(ST_LINES))
    out = tmp_path / "out.jsonl"
    save_chat(load_chat(src), out)
    data = out.read_bytes()
    assert not data.endswith(b"\n")  # SillyTavern joins lines with \n and adds none at the end
    assert [json.loads(line) for line in data.split(b"\n")] == ST_LINES
    assert "ü".encode() in data  # raw UTF-8, as JSON.stringify writes it


def test_new_chat_round_trip_with_swipes_and_unfinished_marker(tmp_path: Path) -> None:
    chat = Chat.start("Marisol", "Theo", ["Hi.", "Hello there.", ""])
    chat.select_swipe(0, 1)
    chat.add(True, "Where am I?\n\n*looks around*")
    chat.add(False, "Gull Island.")
    chat.add_swipe(2, "Nobody comes here on purp")
    chat.mark_unfinished(2)
    chat.turns[2].swipe_info = [{"send_date": "x", "extra": {"k": [1, 2]}}, None]
    chat.persona, chat.scenario, chat.length = "Theo", "washes ashore", "long"
    chat.metadata["someone_elses"] = {"deep": [{"a": None}]}
    chat.unknown["future_header_key"] = 3.5
    chat.turns[1].unknown["future_message_key"] = {"x": "y"}
    path = tmp_path / "c.jsonl"
    save_chat(chat, path)
    back = load_chat(path)
    assert back == chat
    assert back.turns[2].unfinished and back.turns[2].text == "Nobody comes here on purp"
    assert back.persona == "Theo" and back.length == "long"
    line = json.loads(path.read_bytes().split(b"\n")[3])
    assert line["extra"]["rpchat"]["unfinished"] == [1]
    assert line["mes"] == line["swipes"][line["swipe_id"]]


def test_mes_wins_over_stale_swipe_and_bad_swipe_id_keeps_mes(tmp_path: Path) -> None:
    head = ST_LINES[0]
    stale = {"name": "S", "is_user": False, "mes": "edited", "swipes": ["old", "b"], "swipe_id": 0}
    lost = {"name": "S", "is_user": False, "mes": "shown", "swipes": ["a"], "swipe_id": 7}
    chat = load_chat(write(tmp_path, st_bytes([head, stale, lost])))
    assert chat.turns[0].swipes == ["edited", "b"]
    assert chat.turns[1].text == "shown" and chat.turns[1].swipes == ["a", "shown"]


def test_minimal_and_epoch_dates_from_other_importers(tmp_path: Path) -> None:
    # Kobold Lite / RisuAI imports in SillyTavern: no create_date, send_date in epoch ms, no extra.
    lines = [
        {"user_name": "You", "character_name": "KoboldAI"},
        {"name": "You", "is_user": True, "mes": "hi", "send_date": 1714566600000},
        {"is_user": False, "mes": None},
    ]
    chat = load_chat(write(tmp_path, st_bytes(lines)))
    assert chat.turns[0].send_date == "2024-05-01T12:30:00.000Z"
    assert chat.turns[1].name == "KoboldAI" and chat.turns[1].text == ""


def test_torn_last_line_is_recovered_with_a_warning(tmp_path: Path) -> None:
    data = st_bytes(ST_LINES)
    torn = data[: data.rindex(b"\n") + 25]
    path = write(tmp_path, torn)
    chat = load_chat(path)
    assert len(chat.turns) == 3
    assert chat.warnings and "line 5" in chat.warnings[0]
    assert path.read_bytes() == torn  # loading never touches the file

    store = ChatStore(path)
    chat = store.open()
    kept = [p for p in tmp_path.glob("chat.corrupt-*.jsonl")]
    assert len(kept) == 1 and kept[0].read_bytes() == torn
    assert any(kept[0].name in w for w in chat.warnings)
    chat.add(True, "next")
    store.save(chat)
    assert len(load_chat(path).turns) == 4 and kept[0].read_bytes() == torn


def _deep(n: int) -> str:
    return "[" * n + "]" * n


CORRUPT: dict[str, bytes] = {
    "empty": b"",
    "blank lines": b"\n \n\r\n",
    "plain text": b"hello\nworld\n",
    "torn header only": b'{"user_name":"U","charac',
    "missing header": st_bytes(ST_LINES[1:]),
    "header is a list": st_bytes([[1, 2], ST_LINES[2]]),
    "header is a string": b'"user_name"\n' + st_bytes([ST_LINES[2]]),
    "user_name is a list": st_bytes([{"user_name": ["a"], "character_name": "C"}]),
    "character_name is a number": st_bytes([{"user_name": "U", "character_name": 5}]),
    "chat_metadata is text": st_bytes([{"user_name": "U", "chat_metadata": "x"}]),
    "create_date is a list": st_bytes([{"user_name": "U", "create_date": []}]),
    "middle line not json": st_bytes(ST_LINES[:2]) + b"\n{nope\n" + st_bytes([ST_LINES[2]]),
    "message is a list": st_bytes([ST_LINES[0], [1], ST_LINES[2]]),
    "is_user is text": st_bytes([ST_LINES[0], {"name": "a", "is_user": "yes", "mes": "x"}]),
    "is_user missing": st_bytes([ST_LINES[0], {"name": "a", "mes": "x"}]),
    "name is a list": st_bytes([ST_LINES[0], {"name": ["a"], "is_user": True, "mes": "x"}]),
    "mes is a number": st_bytes([ST_LINES[0], {"name": "a", "is_user": True, "mes": 3}]),
    "swipes is text": st_bytes([ST_LINES[0], {"is_user": False, "mes": "x", "swipes": "x"}]),
    "swipes hold numbers": st_bytes([ST_LINES[0], {"is_user": False, "mes": "x", "swipes": [1]}]),
    "swipe_id is text": st_bytes(
        [ST_LINES[0], {"is_user": False, "mes": "x", "swipes": ["x"], "swipe_id": "0"}]
    ),
    "swipe_id is bool": st_bytes(
        [ST_LINES[0], {"is_user": False, "mes": "x", "swipes": ["x"], "swipe_id": True}]
    ),
    "extra is a list": st_bytes([ST_LINES[0], {"is_user": False, "mes": "x", "extra": []}]),
    "swipe_info is an object": st_bytes([ST_LINES[0], {"is_user": False, "mes": "x", "swipe_info": {}}]),
    "send_date is an object": st_bytes([ST_LINES[0], {"is_user": False, "mes": "x", "send_date": {}}]),
    "send_date out of range": st_bytes([ST_LINES[0], {"is_user": False, "mes": "x", "send_date": 1e300}]),
    "last line wrong types": st_bytes([ST_LINES[0], {"is_user": 1, "mes": "x"}]),
    "not utf-8": st_bytes([ST_LINES[0]]) + b'\n{"is_user":true,"mes":"\xff\xfe"}\n' + st_bytes([ST_LINES[2]]),
    "latin-1 header": '{"user_name":"J\u00fcrgen"}'.encode("latin-1"),
    "nan": st_bytes([ST_LINES[0]])
    + b'\n{"is_user":true,"mes":"x","extra":{"v":NaN}}\n'
    + st_bytes([ST_LINES[2]]),
    "nested 10000 deep": (
        st_bytes([ST_LINES[0]])
        + b'\n{"is_user":true,"mes":"x","extra":{"v":'
        + _deep(10000).encode()
        + b"}}\n"
        + st_bytes([ST_LINES[2]])
    ),
    "huge number": b'{"user_name":"U","chat_metadata":{"n":'
    + b"9" * 5000
    + b"}}\n"
    + st_bytes([ST_LINES[2]]),
    "binary junk": bytes(range(256)) * 4,
    "float overflow": st_bytes([ST_LINES[0]]) + b'\n{"is_user":true,"mes":"x","extra":{"v":1e400}}\n{}',
    "ascii control in json": st_bytes([ST_LINES[0]]) + b'\n{"is_user":true,"mes":"a\x01b"}\n{}',
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_file_raises_one_line_chat_error(tmp_path: Path, case: str) -> None:
    path = write(tmp_path, CORRUPT[case], "Bad Chat.jsonl")
    with pytest.raises(ChatError) as info:
        load_chat(path)
    message = str(info.value)
    assert "\n" not in message and "Bad Chat.jsonl" in message


def test_line_and_file_size_caps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MAX_LINE_BYTES", 1000)
    long_line = st_bytes([ST_LINES[0], {"is_user": True, "mes": "x" * 2000}, ST_LINES[2]])
    with pytest.raises(ChatError, match="line 2 is longer"):
        load_chat(write(tmp_path, long_line))
    monkeypatch.setattr(store_module, "MAX_CHAT_BYTES", 5000)
    with pytest.raises(ChatError, match="larger than"):
        load_chat(write(tmp_path, st_bytes(ST_LINES) + b"\n" + b" " * 6000))


def test_missing_file_and_folder_raise_chat_error(tmp_path: Path) -> None:
    with pytest.raises(ChatError, match="no such chat file"):
        load_chat(tmp_path / "gone.jsonl")
    with pytest.raises(ChatError, match="folder"):
        load_chat(tmp_path)
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)  # opening a FIFO for reading would block forever
    with pytest.raises(ChatError, match="not a regular file"):
        load_chat(fifo)
    with pytest.raises(ChatError, match="not a regular file"):
        ChatStore(fifo).open()
    assert fifo.exists()  # not moved aside: it is not a corrupt chat


def test_bad_lines_are_left_out_the_original_kept_and_one_notice_names_them(tmp_path: Path) -> None:
    good = st_bytes(ST_LINES)
    lines = good.split(b"\n")
    bad = b"\n".join([*lines[:2], b"{broken", lines[2], b'{"is_user": "yes", "mes": "?"}', *lines[3:]])
    path = write(tmp_path, bad, "Seraphina - 2024-05-01@12h30m00s.jsonl")
    chat = ChatStore(path).open()
    # Every readable line is kept, in order, with the header's settings.
    assert chat.turns == load_chat(write(tmp_path, good, "good.jsonl")).turns
    assert chat.metadata["variables"] == {"mood": "calm"}
    kept = list(tmp_path.glob("Seraphina - 2024-05-01@12h30m00s.corrupt-*.jsonl"))
    assert len(kept) == 1 and kept[0].read_bytes() == bad
    (notice,) = chat.warnings
    assert path.name in notice and "line 3 " in notice and "line 5 " in notice and kept[0].name in notice
    assert "\n" not in notice
    # The chat file now holds what was kept, so it opens cleanly from then on.
    assert load_chat(path).turns == chat.turns
    again = ChatStore(path).open()
    assert again.warnings == [] and len(list(tmp_path.glob("*.corrupt-*"))) == 1


def test_a_lost_header_is_rebuilt_from_the_messages(tmp_path: Path) -> None:
    lines = st_bytes(ST_LINES).split(b"\n")
    path = write(tmp_path, b"\n".join([b"\x00garbage", *lines[1:]]))
    chat = ChatStore(path).open()
    assert (chat.character_name, chat.user_name) == ("Seraphina", "User")
    assert len(chat.turns) == len(ST_LINES) - 1 and "line 1 " in chat.warnings[0]


def test_a_file_with_nothing_readable_is_moved_aside_whole(tmp_path: Path) -> None:
    bad = b"{broken\n\xff\xfe\n[1, 2"
    path = write(tmp_path, bad)
    store = ChatStore(path)
    with pytest.raises(ChatError) as info:
        store.open()
    kept = list(tmp_path.glob("chat.corrupt-*.jsonl"))
    assert len(kept) == 1 and kept[0].read_bytes() == bad and not path.exists()
    assert kept[0].name in str(info.value) and "\n" not in str(info.value)
    # The store now writes a fresh chat; the corrupt bytes stay where they were kept.
    fresh = Chat.start("Seraphina", "User", ["Hello again."])
    store.save(fresh)
    assert load_chat(path) == fresh
    assert kept[0].read_bytes() == bad


def test_import_validates_and_files_into_the_library(tmp_path: Path) -> None:
    src = write(tmp_path, st_bytes(ST_LINES), "Seraphina - 2024-05-01@12h30m00s.jsonl")
    chats_dir = tmp_path / "library"
    first = import_st_chat(src, chats_dir)
    second = import_st_chat(src, chats_dir)
    assert first.parent == chats_dir / "Seraphina" and first.name == src.name
    assert second != first and second.parent == first.parent
    assert load_chat(first) == load_chat(src)

    bad = write(tmp_path, b"not a chat", "evil.jsonl")
    with pytest.raises(ChatError, match="evil.jsonl"):
        import_st_chat(bad, chats_dir)
    assert sorted(p.name for p in first.parent.iterdir()) == sorted([first.name, second.name])


def test_import_of_hostile_names_stays_inside_the_library(tmp_path: Path) -> None:
    lines = [dict(ST_LINES[0], character_name="../../../etc"), ST_LINES[2]]
    src = write(tmp_path, st_bytes(lines), "..jsonl")
    chats_dir = tmp_path / "library"
    dest = import_st_chat(src, chats_dir)
    assert dest.resolve().parent.parent == chats_dir.resolve()


def test_export_writes_pure_sillytavern_format(tmp_path: Path) -> None:
    chat = load_chat(write(tmp_path, st_bytes(ST_LINES)))
    chat.persona = "Theo"
    chat.mark_unfinished(3)
    out = tmp_path / "export.jsonl"
    export_st_chat(chat, out)
    lines = [json.loads(line) for line in out.read_bytes().split(b"\n")]
    assert "rpchat" not in lines[0]["chat_metadata"]
    assert all("rpchat" not in line.get("extra", {}) for line in lines[1:])
    assert lines == ST_LINES  # what came from SillyTavern goes back unchanged
    assert chat.persona == "Theo" and chat.turns[3].unfinished  # the chat itself is untouched

    folder = tmp_path / "exports"
    folder.mkdir()
    export_st_chat(chat, folder)
    (written,) = folder.glob("Seraphina - *.jsonl")
    assert load_chat(written).turns == load_chat(out).turns


def test_dump_rejects_unserializable_data_as_chat_error() -> None:
    chat = Chat.start("C", "U", ["hi"])
    chat.turns[0].extra["bad"] = object()
    with pytest.raises(ChatError, match="cannot be written"):
        dump_chat(chat)


def test_lone_surrogate_is_escaped_not_crashing(tmp_path: Path) -> None:
    path = write(tmp_path, st_bytes([ST_LINES[0]]) + b'\n{"is_user":true,"mes":"a\\ud800b"}')
    chat = load_chat(path)
    out = tmp_path / "o.jsonl"
    save_chat(chat, out)
    assert load_chat(out) == chat
