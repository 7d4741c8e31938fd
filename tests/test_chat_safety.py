"""Chats are never lost: concurrent writers are detected, and SIGKILL mid-save leaves a whole file."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rpchat.chat import Chat, ChatConflictError, ChatStore, load_chat, save_chat

REPO = Path(__file__).resolve().parent.parent


def texts(chat: Chat) -> list[str]:
    return [t.text for t in chat.turns]


def test_second_writer_is_refused_and_its_turns_kept(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    save_chat(Chat.start("Marisol", "Theo", ["Hello."]), path)
    a, b = ChatStore(path), ChatStore(path)
    chat_a, chat_b = a.open(), b.open()
    chat_a.add(True, "from A")
    a.save(chat_a)
    chat_b.add(True, "from B")
    with pytest.raises(ChatConflictError) as info:
        b.save(chat_b)
    message = str(info.value)
    assert "changed by another program" in message and "chat.jsonl" in message and "\n" not in message
    # Nothing is lost: A's turn is in the file, B's version in the conflict copy.
    assert texts(load_chat(path)) == ["Hello.", "from A"]
    assert texts(load_chat(info.value.conflict_path)) == ["Hello.", "from B"]
    # Saving again while still in conflict updates the same copy instead of piling up new ones.
    chat_b.add(False, "more B")
    with pytest.raises(ChatConflictError):
        b.save(chat_b)
    assert len(list(tmp_path.glob("chat.conflict-*.jsonl"))) == 1
    assert texts(load_chat(info.value.conflict_path))[-1] == "more B"
    # After a reload B works from A's version and saves normally.
    chat_b = b.reload()
    chat_b.add(True, "B again")
    b.save(chat_b)
    assert texts(load_chat(path)) == ["Hello.", "from A", "B again"]
    # ... and now A is the stale one.
    with pytest.raises(ChatConflictError):
        a.save(chat_a)


def test_force_overwrites_and_touch_is_not_a_conflict(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    save_chat(Chat.start("M", "T", ["Hi."]), path)
    store = ChatStore(path)
    chat = store.open()
    os.utime(path, (1, 1))  # same bytes, different mtime: nothing to lose
    chat.add(True, "one")
    store.save(chat)
    other = Chat.start("M", "T", ["Overwritten elsewhere."])
    save_chat(other, path)
    chat.add(True, "two")
    store.save(chat, force=True)
    assert texts(load_chat(path)) == ["Hi.", "one", "two"]


def test_sillytavern_rewrite_with_new_integrity_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    save_chat(Chat.start("M", "T", ["Hi."]), path)
    store = ChatStore(path)
    chat = store.open()
    lines = path.read_bytes().split(b"\n")
    header = json.loads(lines[0])
    header["chat_metadata"]["integrity"] = "another-uuid"
    path.write_bytes(b"\n".join([json.dumps(header).encode(), *lines[1:]]))
    with pytest.raises(ChatConflictError):
        store.save(chat)


def test_file_appearing_under_a_new_store_is_a_conflict(tmp_path: Path) -> None:
    path = tmp_path / "new.jsonl"
    store = ChatStore(path)
    save_chat(Chat.start("M", "T", ["Someone else's."]), path)
    with pytest.raises(ChatConflictError):
        store.save(Chat.start("M", "T", ["Mine."]))
    assert texts(load_chat(path)) == ["Someone else's."]


def test_deleted_file_is_written_again(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    save_chat(Chat.start("M", "T", ["Hi."]), path)
    store = ChatStore(path)
    chat = store.open()
    path.unlink()
    chat.add(True, "still here")
    store.save(chat)
    assert texts(load_chat(path)) == ["Hi.", "still here"]


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from rpchat.chat import Chat, ChatConflictError, ChatStore

    path, who, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    store = ChatStore(path)
    done = 0
    while done < count:
        chat = store.reload()
        chat.add(True, f"{who}-{done}")
        try:
            store.save(chat)
        except ChatConflictError:
            continue
        done += 1
    """
)


def test_processes_racing_on_one_chat_lose_no_turn(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    save_chat(Chat.start("M", "T", ["Hi."]), path)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), who, "12"], env=env)
        for who in ("a", "b", "c")
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    got = texts(load_chat(path))
    for who in ("a", "b", "c"):
        assert [t for t in got if t.startswith(f"{who}-")] == [f"{who}-{i}" for i in range(12)]
    assert len(got) == 1 + 36


KILLED = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from rpchat.chat import Chat, ChatStore

    path = Path(sys.argv[1])
    store = ChatStore(path)
    if path.exists():
        chat = store.open()
    else:
        chat = Chat.start("Marisol", "Theo", ["turn 0 hello"])
        for i in range(1, 300):
            chat.add(i % 2 == 1, f"turn {i} " + "words " * 300)
        store.save(chat)
    print(len(chat.turns), flush=True)
    while True:
        i = len(chat.turns)
        chat.add(i % 2 == 1, f"turn {i} " + "words " * 300)
        if i % 3 == 0:
            chat.add_swipe(i, f"turn {i} swipe")
            chat.select_swipe(i, 0)
        store.save(chat)
        print(len(chat.turns), flush=True)
    """
)


def _read_acks(proc: subprocess.Popen[bytes], until: float) -> list[int]:
    """Saved-turn counts the writer acknowledged (each printed only after save returned)."""
    acks: list[int] = []
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    while time.monotonic() < until:
        ready, _, _ = select.select([fd], [], [], max(0.0, until - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
    acks += [int(x) for x in buf.split()]
    return acks


def test_sigkill_mid_save_never_loses_a_saved_turn(tmp_path: Path) -> None:
    path = tmp_path / "chats" / "Marisol" / "chat.jsonl"
    path.parent.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    rng = random.Random(20240501)
    saved = 0
    temps_seen = 0
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, "-c", KILLED, str(path)], env=env, stdout=subprocess.PIPE)
        # Wait for startup and for one save of the loop (however slow this machine is), then kill at a random
        # moment of the save loop.
        first = _read_ack(proc)
        second = _read_ack(proc)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        acks = [first, second, *_read_acks(proc, time.monotonic() + 5)]
        assert proc.stdout is not None
        proc.stdout.close()
        temps_seen += len(list(path.parent.glob(".*.tmp")))
        chat = load_chat(path)  # parses: never torn
        assert chat.warnings == []
        assert len(chat.turns) >= max(acks) >= saved
        for i, turn in enumerate(chat.turns):
            assert turn.text.startswith(f"turn {i} ")
        saved = len(chat.turns)
    assert saved >= 300 + 20  # every writer got to save at least once in its loop before the kill
    ChatStore(path).open()
    assert list(path.parent.glob(".*.tmp")) == []  # stale temps are cleaned, not piled up
    assert sorted(p.name for p in path.parent.iterdir()) == ["chat.jsonl"]
    print(f"kills=20 turns={saved} temp files found after kills={temps_seen}")


def _read_ack(proc: subprocess.Popen[bytes]) -> int:
    """The writer's next acknowledged turn count (a liveness bound of 60 s, not a timing claim)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    ready, _, _ = select.select([fd], [], [], 60)
    assert ready, "writer did not start or stalled"
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 1)
        assert chunk, "writer died"
        line += chunk
    return int(line)
