"""World info from the chat screen: attach through the palette and the path dialog, see it in the sidebar."""

from __future__ import annotations

import asyncio
from pathlib import Path

from session_support import (
    LORE,
    open_chat_from_library,
    wait_for,
    write_world,
)
from textual.widgets import Input

from rpchat.chat.library import list_chats
from rpchat.chat.store import load_chat
from rpchat.paths import profile
from rpchat.tui.app import RpchatApp
from rpchat.tui.chat import ChatScreen
from rpchat.tui.dialogs import PathPrompt, TextPrompt

NAME = "Wenonah"


def saved_settings() -> dict:  # type: ignore[type-arg]
    (entry,) = list_chats(profile().cards_dir / f"{NAME.lower()}.png")
    return load_chat(entry.path).settings


async def answer(pilot, app: RpchatApp, text: str) -> None:  # type: ignore[no-untyped-def]
    # Typing a long temp path key by key is slow under Pilot; the dialog still checks and submits it.
    app.screen.query_one(Input).value = text
    await pilot.press("enter")


async def palette(pilot, app: RpchatApp, title: str) -> None:  # type: ignore[no-untyped-def]
    await pilot.press("ctrl+p")
    await pilot.pause()
    await pilot.press(*title)
    await pilot.pause(0.3)
    await pilot.press("enter")
    await pilot.pause()


def sidebar(screen: ChatScreen) -> str:
    return str(screen.query_one("#worlds").render())


def test_attach_detach_and_toggle_from_the_palette(home: Path) -> None:
    gull = write_world(home / "gull.json")
    bad = home / "broken.json"
    bad.write_text("{nope", encoding="utf-8")

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_chat_from_library(pilot, app, NAME)
            assert sidebar(screen) == ""

            # A broken file: one error notification, nothing attached.
            await palette(pilot, app, "Attach w")
            await wait_for(pilot, lambda: isinstance(app.screen, PathPrompt))
            await answer(pilot, app, str(bad))
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            await wait_for(pilot, lambda: any("broken.json" in n.message for n in app._notifications))
            assert screen.session.worlds == [] and "worlds" not in saved_settings()

            await palette(pilot, app, "Attach w")
            await wait_for(pilot, lambda: isinstance(app.screen, PathPrompt))
            await answer(pilot, app, str(gull))
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            await pilot.pause()
            assert sidebar(screen) == "World: Gull Island"
            assert saved_settings()["worlds"] == ["Gull Island.json"]

            # The entry reaches the prompt once its key is in the chat.
            screen.session.send("Tell me about the lighthouse.")
            assert LORE in screen.session.build().text

            await palette(pilot, app, "Toggle card")
            await wait_for(pilot, lambda: saved_settings().get("use_card_lorebook") is False)

            # Two worlds: detaching asks which one, offering the newest.
            reef = write_world(home / "reef.json", key="reef", content="The reef is sharp.", name="Reef")
            screen.session.attach_world(reef)
            screen.update_sidebar()
            assert "Gull Island" in sidebar(screen) and "Reef" in sidebar(screen)
            await palette(pilot, app, "Detach w")
            await wait_for(pilot, lambda: isinstance(app.screen, TextPrompt))
            assert app.screen.query_one(Input).value == "Reef.json"
            await answer(pilot, app, "Gull Island")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            await pilot.pause()
            assert saved_settings()["worlds"] == [screen.session.worlds[0]]
            assert "Gull Island" not in sidebar(screen)
            assert LORE not in screen.session.build().text

    asyncio.run(go())
