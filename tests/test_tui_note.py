"""The author's note from the chat screen: the palette opens the dialog, the note is saved in SillyTavern's
``note_*`` keys and reaches the prompt at its depth."""

from __future__ import annotations

import asyncio
from pathlib import Path

from session_support import open_chat_from_library, wait_for
from textual.widgets import Input, Select, TextArea

from rpchat.chat.library import list_chats
from rpchat.chat.store import load_chat
from rpchat.paths import profile
from rpchat.tui.app import RpchatApp
from rpchat.tui.chat import ChatScreen
from rpchat.tui.inspector import prompt_summary
from rpchat.tui.note_dialog import AuthorsNoteDialog

NAME = "Wenonah"


def saved_metadata() -> dict:  # type: ignore[type-arg]
    (card,) = profile().cards_dir.iterdir()
    (entry,) = list_chats(card, NAME)
    return load_chat(entry.path).metadata


async def open_note(pilot, app: RpchatApp) -> AuthorsNoteDialog:  # type: ignore[no-untyped-def]
    await pilot.press("ctrl+p")
    await pilot.pause()
    await pilot.press(*"Author's")
    await pilot.pause(0.3)
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, AuthorsNoteDialog))
    return app.screen  # type: ignore[return-value]


def test_note_dialog_saves_the_note_and_the_prompt_carries_it(home: Path) -> None:
    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_chat_from_library(pilot, app, NAME)
            screen.session.send("Hello there.")
            screen.session.chat.add(False, "Welcome.")
            screen.session.send("Where am I?")

            dialog = await open_note(pilot, app)
            await pilot.press(*"Keep {{char}} wary.")
            dialog.query_one("#note-depth", Input).value = "1001"
            await pilot.press("ctrl+s")
            await pilot.pause()
            # A bad number is refused in place; nothing is saved.
            assert isinstance(app.screen, AuthorsNoteDialog) and "note_prompt" not in saved_metadata()
            assert "Depth must be" in str(dialog.query_one("#error").render())
            dialog.query_one("#note-depth", Input).value = "1"
            dialog.query_one("#note-role", Select).value = "assistant"
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            meta = saved_metadata()
            assert (meta["note_prompt"], meta["note_depth"], meta["note_interval"], meta["note_position"],
                    meta["note_role"]) == ("Keep {{char}} wary.", 1, 1, 1, 2)
            assert screen.session.build().text.endswith(
                f"### Response:\n{NAME}: Keep {NAME} wary.\n\n### Input:\nUser: Where am I?\n\n"
                f"### Response: (length = medium)\n{NAME}:")
            assert "Author's note: depth 1, as assistant." in prompt_summary(screen.session.build())

            # The dialog opens on the saved note; Esc changes nothing, an empty text clears it.
            dialog = await open_note(pilot, app)
            assert dialog.query_one("#note-text", TextArea).text == "Keep {{char}} wary."
            await pilot.press("escape")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            dialog = await open_note(pilot, app)
            dialog.query_one("#note-text", TextArea).text = ""
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            assert saved_metadata()["note_prompt"] == "" and "wary" not in screen.session.build().text

    asyncio.run(go())
