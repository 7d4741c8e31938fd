"""The chat screen on a SillyTavern chat, driven by Pilot: hidden turns shown as hidden and kept out of the prompt,
hide/unhide from the message cursor and the palette, the user's name from the chat and from F3."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from session_support import make_card, tiny_config, wait_for, write_profile_config

from rpchat.chat.library import import_st_chat
from rpchat.chat.store import load_chat
from rpchat.paths import profile
from rpchat.personas import Persona, PersonaBook
from rpchat.tui.app import RpchatApp
from rpchat.tui.chat import ChatScreen
from rpchat.tui.inspector import PromptInspector
from rpchat.tui.persona_editor import PersonaEditor

FIXTURES = Path(__file__).parent / "fixtures"
HIDDEN = "three silver moons"


@pytest.fixture
def chat_path(tiny_model: Path) -> Path:
    write_profile_config(tiny_config(tiny_model))
    PersonaBook(personas=[Persona("User"), Persona("Theo", "A castaway.")], default="User").save(
        profile().personas_file)
    profile().cards_dir.mkdir(parents=True)
    make_card(profile().cards_dir, "Marisol")  # a small card: the whole chat fits the tiny model's context
    return import_st_chat(FIXTURES / "st_chat_kael.jsonl", profile().chats_dir, character="Marisol")


def run(coro) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(coro)


async def open_kael(pilot, app: RpchatApp, chat_path: Path) -> ChatScreen:  # type: ignore[no-untyped-def]
    await wait_for(pilot, lambda: type(app.screen).__name__ == "LibraryScreen")
    card = next(profile().cards_dir.iterdir())
    app.open_chat(card, chat_path)
    await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
    await pilot.pause()
    return app.screen  # type: ignore[return-value]


def rendered(screen: ChatScreen, index: int) -> str:
    return str(screen.turn_views()[index].render())


def test_hidden_turn_is_shown_as_hidden_and_f5_shows_a_prompt_without_it(chat_path: Path) -> None:
    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(140, 40)) as pilot:
            screen = await open_kael(pilot, app, chat_path)
            views = screen.turn_views()
            assert views[2].has_class("-hidden") and "hidden from the AI" in rendered(screen, 2)
            assert HIDDEN in rendered(screen, 2)  # still on screen, readable
            assert "narrator" in rendered(screen, 3) and not views[3].has_class("-hidden")
            assert rendered(screen, 1).startswith("Kael")
            await pilot.press("f5")
            await wait_for(pilot, lambda: isinstance(app.screen, PromptInspector))
            built = app.screen.built  # type: ignore[attr-defined]
            assert not built.dropped and "Kael: *I sit up slowly.* Where am I?" in built.text
            assert HIDDEN not in built.text
            assert "User:" not in built.text and "\nKael:" in built.stop

    run(go())


def test_message_cursor_h_and_the_palette_hide_and_unhide_a_turn(chat_path: Path) -> None:
    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(140, 40)) as pilot:
            screen = await open_kael(pilot, app, chat_path)
            await pilot.press("ctrl+up", "up", "up", "up")  # cursor on turn #2 ("Where am I?")
            assert screen.transcript.cursor == 1
            await pilot.press("h")
            await pilot.pause()
            assert load_chat(chat_path).turns[1].hidden
            assert screen.turn_views()[1].has_class("-hidden") and "hidden from the AI" in rendered(screen, 1)
            assert "Where am I?" not in screen.session.build().text
            await pilot.press("up", "h")  # the greeting: hidden, then shown again
            await pilot.pause()
            assert load_chat(chat_path).turns[0].hidden
            await pilot.press("h")
            await pilot.pause()
            assert not load_chat(chat_path).turns[0].hidden
            # The palette entry acts on the message under the cursor: turn #3, the hidden one, is shown again.
            await pilot.press("down", "down")
            assert screen.transcript.cursor == 2
            await pilot.press("ctrl+p")
            await pilot.pause()
            await pilot.press(*"Hide/unhide")
            await pilot.pause(0.3)
            await pilot.press("enter")
            await wait_for(pilot, lambda: not load_chat(chat_path).turns[2].hidden)
            assert not screen.turn_views()[2].has_class("-hidden")
            assert HIDDEN in screen.session.build().text
            line = json.loads(chat_path.read_text(encoding="utf-8").splitlines()[3])
            assert line["is_system"] is False  # saved the way SillyTavern reads it

    run(go())


def test_f3_keeps_the_chats_user_name_and_picking_a_persona_renames_the_users_turns(chat_path: Path) -> None:
    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(140, 40)) as pilot:
            screen = await open_kael(pilot, app, chat_path)
            assert "Persona: Kael" in str(screen.query_one("#persona").render())
            # Applying F3 as it opens (e.g. to set a scenario) keeps Kael: the chat's name is offered as a persona.
            await pilot.press("f3")
            await wait_for(pilot, lambda: isinstance(app.screen, PersonaEditor))
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            assert screen.session.persona.name == "Kael" and load_chat(chat_path).user_name == "Kael"
            # Picking Theo renames the user's turns on screen, in the file and in the prompt.
            await pilot.press("f3")
            await wait_for(pilot, lambda: isinstance(app.screen, PersonaEditor))
            editor = app.screen
            editor.query_one("#personas").highlighted = 1  # type: ignore[attr-defined]
            await pilot.pause()
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            saved = load_chat(chat_path)
            assert saved.user_name == "Theo" and {t.name for t in saved.turns if t.is_user} == {"Theo"}
            assert rendered(screen, 1).startswith("Theo") and rendered(screen, 4).startswith("Theo")
            assert "Theo: *I look up at the sky.*" in screen.session.build().text

    run(go())
