"""Snapshot tests (pytest-textual-snapshot) pinning the look of the library and chat screens.

Bundled cards are hidden (an empty bundled folder) so the pictures only change when the screens do.
Update them with ``pytest tests/test_tui_snapshots.py --snapshot-update`` after a deliberate change.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from session_support import make_card

from rpchat.chat.library import new_chat_path
from rpchat.chat.model import Chat
from rpchat.chat.store import ChatStore
from rpchat.config import Config, save_config
from rpchat.paths import profile
from rpchat.tui.app import RpchatApp

SIZE = (110, 34)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    empty = tmp_path / "no-bundled-cards"
    empty.mkdir()
    monkeypatch.setattr("rpchat.cards.library.bundled_dir", lambda name: empty)
    save_config(profile(), Config())
    profile().cards_dir.mkdir(parents=True)
    make_card(profile().cards_dir, "Marisol")
    make_card(profile().cards_dir, "Quillon", tags=["library", "ghost"], creator_notes="A bookish ghost.")
    return tmp_path


async def steady_cursors(pilot) -> None:  # type: ignore[no-untyped-def]
    """Stop cursors blinking, so a picture never depends on when it was taken."""
    for widget in pilot.app.screen.query("Input, TextArea"):
        widget.cursor_blink = False
    await pilot.pause()


def test_library_screen(home: Path, snap_compare) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(RpchatApp(load_model=False), terminal_size=SIZE, run_before=steady_cursors)


def test_chat_screen(home: Path, snap_compare) -> None:  # type: ignore[no-untyped-def]
    chat = Chat.start("Marisol", "User", ['*throws a blanket over you.* "Up you get, Theo."', "Alt greeting"])
    chat.length = "medium"
    chat.add(True, "Where am I? [bold]not markup[/bold]")
    reply = chat.add(False, '"Gull Island. Nobody comes here on purpose." _He looks half drowned._ (OOC: brb)')
    reply.swipes.append("Another swipe")
    chat.persona = "User"
    path = new_chat_path("Marisol")
    ChatStore(path).save(chat)
    card = profile().cards_dir / "marisol.png"

    async def open_chat(pilot) -> None:  # type: ignore[no-untyped-def]
        pilot.app.open_chat(card, path)
        await pilot.pause()
        await steady_cursors(pilot)

    assert snap_compare(RpchatApp(load_model=False), terminal_size=SIZE, run_before=open_chat)
