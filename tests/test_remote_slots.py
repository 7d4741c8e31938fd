"""Chat states on a real llama-server (``--slot-save-path``): after a restart of the server and of rpchat,
the chat's saved slot is restored and the server's own counts show the prompt served from it. A server
without a slot folder still replies, and says nothing about it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from llamaserver import LlamaServer

ROOT = Path(__file__).resolve().parent.parent
CARD = ROOT / "cards" / "marisol_vega.png"
FIGURES = re.compile(r"prompt (\d+) evaluated / (\d+) reused")
LONG = " ".join(f"I tell you about the harbour, the mill and the boats, part {i}." for i in range(20))


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPCHAT_HOME", str(tmp_path / "home"))


def reply(url: str, chat: Path, say: str) -> tuple[int, int, str]:
    """`rpchat reply` on ``chat``: (evaluated, reused) as the server counted them, and stderr."""
    done = subprocess.run([sys.executable, "-m", "rpchat", "reply", str(CARD), "--chat", str(chat), "--say", say,
                           "--engine", url, "--max-new", "4"],
                          capture_output=True, text=True, env=dict(os.environ), timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    match = FIGURES.search(done.stderr.strip().splitlines()[-1])
    assert match, done.stderr
    return int(match[1]), int(match[2]), done.stderr


def test_a_restarted_server_serves_the_reopened_chat_from_its_saved_slot(
    llama_server_binary: Path, demo_model: Path, tmp_path: Path
) -> None:
    slots = tmp_path / "slots"
    slots.mkdir()
    # The demo model (Gemma 3) uses a sliding window: llama-server uses a restored slot of such a model
    # only with the full-size window cache (its restore has no checkpoints of a partial one).
    extra = ["--slot-save-path", f"{slots}{os.sep}", "--swa-full"]
    chat = tmp_path / "chat.jsonl"
    first = LlamaServer(llama_server_binary, demo_model, tmp_path / "first.log", n_ctx=2048, extra=extra)
    try:
        evaluated, _, _ = reply(first.url, chat, LONG)
    finally:
        first.stop()
    assert evaluated > 400
    assert [p.name for p in slots.iterdir() if p.name.startswith("rpchat-")], list(slots.iterdir())

    second = LlamaServer(llama_server_binary, demo_model, tmp_path / "second.log", n_ctx=2048, extra=extra)
    try:
        evaluated2, reused2, _ = reply(second.url, chat, "And the lighthouse?")
    finally:
        second.stop()
    # The new server read the slot back: it reuses the first turn (less its last tokens, which the reply
    # re-tokenizes) and evaluates little more than the new message.
    assert reused2 > 0.9 * evaluated
    assert evaluated2 < reused2 / 10


def test_a_server_without_a_slot_folder_replies_without_a_word_about_it(
    llama_server_binary: Path, demo_model: Path, tmp_path: Path
) -> None:
    chat = tmp_path / "chat.jsonl"
    server = LlamaServer(llama_server_binary, demo_model, tmp_path / "server.log", n_ctx=2048)
    try:
        _, _, err = reply(server.url, chat, "hello")
        evaluated, reused, err2 = reply(server.url, chat, "Where am I?")
    finally:
        server.stop()
    assert "slot" not in err and "slot" not in err2
    assert reused > 0 and evaluated < reused  # the server's own prompt cache still works
