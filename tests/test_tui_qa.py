"""Bugs found by using the app for real (QA pass), each pinned by a Pilot test on the tiny model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from session_support import make_card, open_chat_from_library, tiny_config, wait_for, write_profile_config

from rpchat.chat.library import list_chats
from rpchat.chat.store import load_chat
from rpchat.config import EngineConfig
from rpchat.paths import profile
from rpchat.tui.app import RpchatApp
from rpchat.tui.chat import ChatScreen, EditBox
from rpchat.tui.dialogs import ConfirmDialog
from rpchat.tui.transcript import CutMarker

NAME = "Zephyrine"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Path) -> Path:
    monkeypatch.setenv("RPCHAT_HOME", str(tmp_path / "home"))
    write_profile_config(tiny_config(tiny_model))
    profile().cards_dir.mkdir(parents=True)
    make_card(profile().cards_dir, NAME)
    return tmp_path


async def ready_chat(pilot, app: RpchatApp) -> ChatScreen:  # type: ignore[no-untyped-def]
    screen = await open_chat_from_library(pilot, app, NAME)
    await wait_for(pilot, lambda: app.engine_state == "ready")
    return screen


def saved_turns() -> list[str]:
    entries = list_chats(NAME)
    assert len(entries) == 1
    return [t.text for t in load_chat(entries[0].path).turns]


def test_deleting_a_turn_asks_first_and_no_keeps_it(home: Path) -> None:
    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await ready_chat(pilot, app)
            screen.session.send("keep me")
            screen.show_chat()
            await pilot.press("ctrl+up", "d")
            await pilot.pause()
            assert isinstance(app.screen, ConfirmDialog)
            await pilot.press("n")
            await pilot.pause()
            assert app.screen is screen
            assert saved_turns()[-1] == "keep me"
            await pilot.press("ctrl+up", "d")
            await pilot.pause()
            await pilot.press("y")
            await pilot.pause()
            assert "keep me" not in saved_turns()
            assert len(screen.turn_views()) == 1

    asyncio.run(go())


def test_edit_box_opens_with_the_cursor_at_the_end(home: Path) -> None:
    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await ready_chat(pilot, app)
            screen.session.send("first line\nsecond")
            screen.show_chat()
            screen.input.focus()
            await pilot.press("up")
            box = screen.query_one(EditBox)
            assert box.cursor_location == box.document.end
            await pilot.press("x", "enter")
            await pilot.pause()
            assert saved_turns()[-1] == "first line\nsecondx"

    asyncio.run(go())


def test_cut_marker_for_one_turn_reads_well() -> None:
    assert "1 older turn above is out of the prompt" in str(CutMarker(1).render())
    assert "3 older turns above are out of the prompt" in str(CutMarker(3).render())


def test_failed_reply_with_no_text_does_not_claim_a_partial_reply(home: Path, tiny_model: Path) -> None:
    # A prompt larger than the context fails before the first token: nothing was kept.
    config = tiny_config(tiny_model)
    config.engine = EngineConfig(model=str(tiny_model), n_ctx=256, n_threads=1)
    write_profile_config(config)
    make_card(profile().cards_dir, NAME, description="lorem ipsum dolor " * 200)

    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await ready_chat(pilot, app)
            shown: list[str] = []
            original = screen.notify

            def spy(message: str, **kwargs: object) -> None:
                shown.append(message)
                original(message, **kwargs)  # type: ignore[arg-type]

            screen.notify = spy  # type: ignore[method-assign]
            screen.input.text = "hello"
            await pilot.press("enter")
            await pilot.pause()
            await wait_for(pilot, lambda: not screen.generating)
            await pilot.pause()
            failures = [m for m in shown if "context" in m]
            assert failures, shown
            assert not any("partial reply kept" in m for m in failures)

    asyncio.run(go())
