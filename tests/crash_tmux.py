"""Crash safety in a real terminal: SIGKILL the `rpchat` TUI under tmux mid-reply (used by crash_harness)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from crash_harness import CARD_NAME, Outcome, World, check_chat, temp_files, turn_lines


def run_tui_kill(world: World, rng: random.Random, say: str, timeout_s: float = 60.0) -> Outcome:
    """Start the TUI in a private tmux server, resume the card's last chat, send ``say`` and SIGKILL
    the app at a random moment of the reply; then check the chat file like the CLI runs."""
    sock = f"rpchat-crash-{os.getpid()}"
    env = world.env()
    app = f"exec env RPCHAT_HOME='{world.home}' PYTHONPATH='{env['PYTHONPATH']}' TERM=xterm-256color " \
          f"'{sys.executable}' -m rpchat"

    def tmux(*args: str) -> str:
        done = subprocess.run(["tmux", "-L", sock, *args], capture_output=True, text=True, check=False)
        return done.stdout

    def wait_for(text: str) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in (screen := tmux("capture-pane", "-p", "-t", "s")):
            if time.monotonic() > deadline:
                last = " | ".join(line.strip() for line in screen.splitlines() if line.strip())[-300:]
                raise TimeoutError(f"the TUI never showed {text!r}; screen: {last}")
            time.sleep(0.1)

    if shutil.which("tmux") is None:
        raise RuntimeError("tmux is not installed")
    cards = world.home / "data" / "cards"
    cards.mkdir(parents=True, exist_ok=True)
    if not (cards / world.card.name).exists():
        shutil.copy(world.card, cards / world.card.name)
    chat = _latest_chat(world)
    before = turn_lines(chat) if chat else []
    try:
        tmux("new-session", "-d", "-s", "s", "-x", "120", "-y", "40", app)
        wait_for("character library")
        tmux("send-keys", "-t", "s", "-l", CARD_NAME)
        time.sleep(0.3)
        tmux("send-keys", "-t", "s", "C-o")  # resume the last chat (a new one the first time)
        wait_for("Next reply:")
        wait_for("Model ready")
        chat = _latest_chat(world)
        assert chat is not None
        before = turn_lines(chat)
        tmux("send-keys", "-t", "s", "-l", say)
        tmux("send-keys", "-t", "s", "Enter")
        time.sleep(rng.uniform(0.0, 0.3))
        pid = int(tmux("display-message", "-p", "-t", "s", "#{pane_pid}").strip())
        os.kill(pid, signal.SIGKILL)
    finally:
        tmux("kill-server")
    assert chat is not None
    return Outcome("tui", True, check_chat(before, chat, say), len(temp_files(chat.parent)), -9)


def _latest_chat(world: World) -> Path | None:
    found = sorted((world.home / "data" / "chats").rglob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    found = [p for p in found if ".corrupt-" not in p.name and ".conflict-" not in p.name]
    return found[-1] if found else None


def tui_runs(world: World, runs: int, seed: int) -> list[Outcome]:
    """``runs`` TUI kills, or none when tmux is missing; runs that cannot be driven are reported."""
    import shutil

    if runs <= 0 or shutil.which("tmux") is None:
        return []
    rng = random.Random(seed + 1)
    outcomes = []
    for i in range(runs):
        try:
            outcomes.append(run_tui_kill(world, rng, f"TUI message {i}."))
        except (TimeoutError, OSError, ValueError) as e:
            print(f"TUI run {i} could not be driven: {e}", file=sys.stderr)
    return outcomes
