"""`rpchat reply --world FILE`: the world is attached to the chat file and remembered; bad files are one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from session_support import make_card, write_world

from rpchat.chat.store import load_chat


def rpchat(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RPCHAT_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "rpchat", *args], check=False, capture_output=True, text=True,
                          env=env, timeout=300)


def reply(home: Path, card: Path, chat: Path, model: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return rpchat(home, "reply", str(card), "--chat", str(chat), "--say", "Is the lighthouse lit?",
                  "--model", str(model), "--preset", "deterministic", "--max-new", "4", "--n-ctx", "512", *extra)


def test_reply_with_world_remembers_it_in_the_chat_file(tmp_path: Path, tiny_model: Path) -> None:
    home = tmp_path / "home"
    card = make_card(tmp_path)
    chat = tmp_path / "chat.jsonl"
    world = write_world(tmp_path / "gull.json")

    res = reply(home, card, chat, tiny_model, "--world", str(world), "--no-lore")
    assert res.returncode == 0, res.stderr
    header = json.loads(chat.read_text(encoding="utf-8").splitlines()[0])
    assert header["chat_metadata"]["rpchat"]["worlds"] == ["Gull Island.json"]
    # --no-lore is for this reply only: nothing about it is saved.
    assert "use_card_lorebook" not in header["chat_metadata"]["rpchat"]
    copies = list(home.rglob("Gull Island.json"))
    assert len(copies) == 1 and copies[0].parent.name == "worlds" and copies[0].read_bytes() == world.read_bytes()

    # Remembered: the next reply needs no --world; a world that went missing is a warning, not a failure.
    copies[0].unlink()
    res = reply(home, card, chat, tiny_model)
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if line.startswith("rpchat: warning: ")]
    assert len(warnings) == 1 and "Gull Island.json" in warnings[0] and "missing" in warnings[0]
    assert load_chat(chat).settings["worlds"] == ["Gull Island.json"]
    assert len(load_chat(chat).turns) == 5


def test_reply_with_a_broken_world_is_one_line_and_creates_nothing(tmp_path: Path, tiny_model: Path) -> None:
    home = tmp_path / "home"
    card = make_card(tmp_path)
    chat = tmp_path / "chat.jsonl"
    bad = tmp_path / "bad.json"
    bad.write_text('{"entries": 5}', encoding="utf-8")
    res = reply(home, card, chat, tiny_model, "--world", str(bad))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rpchat: error: ") and "bad.json" in lines[0], res.stderr
    assert not chat.exists()
