"""The story so far in the TUI: written in the background after a reply once turns fall out, and viewed,
edited, pinned or turned off in its dialog (F6, or the palette)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from session_support import open_chat_from_library, tiny_config, wait_for, write_profile_config
from textual.widgets import Checkbox, TextArea

from rpchat.chat.store import load_chat
from rpchat.config import SummaryConfig
from rpchat.memory import update_summary
from rpchat.text import strip_controls
from rpchat.tui.app import RpchatApp
from rpchat.tui.chat import ChatScreen
from rpchat.tui.summary_dialog import StorySummaryDialog

NAME = "Oriane"


def test_a_reply_past_the_context_writes_the_summary_and_f6_edits_and_pins_it(home: Path, tiny_model: Path) -> None:
    config = tiny_config(tiny_model)
    write_profile_config(dataclasses.replace(
        config, engine=dataclasses.replace(config.engine, n_ctx=512),
        summary=SummaryConfig(min_turns=2, chunk_turns=4, max_tokens=16)))

    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_chat_from_library(pilot, app, NAME)
            await wait_for(pilot, lambda: app.engine_state == "ready", timeout=120)
            session = screen.session
            for i in range(12):
                session.chat.add(True, f"Message {i}: the harbour, the mill, my sister Ana and the storm again.")
                session.chat.add(False, f"Answer {i}: Oriane listens and says the pier broke that night.")
            session.save()
            screen.input.text = "What now?"
            await pilot.press("enter")
            # The reply, then the summary in the background: the chat file gets SillyTavern's extra.memory.
            await wait_for(pilot, lambda: load_chat(session.path).summary.text != "", timeout=300)
            written = load_chat(session.path).summary
            assert written.covers >= 3 and not written.pinned
            await wait_for(pilot, lambda: not screen.generating)

            await pilot.press("f6")
            await wait_for(pilot, lambda: isinstance(app.screen, StorySummaryDialog))
            dialog = app.screen
            # Model text is shown inert: control characters as visible symbols.
            assert dialog.query_one("#summary-text", TextArea).text == strip_controls(written.text)
            dialog.query_one("#summary-text", TextArea).text = "Ana's mill burned; Oriane owes the user a boat."
            dialog.query_one("#summary-pinned", Checkbox).value = True
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            saved = load_chat(session.path)
            assert (saved.summary.text, saved.summary.pinned, saved.summary.covers) == (
                "Ana's mill burned; Oriane owes the user a boat.", True, written.covers)
            assert "Story so far: Ana's mill burned; Oriane owes the user a boat.\n\nPlay the role" in (
                session.build().text)
            # Pinned: the next update is never due.
            assert update_summary(session) is None

            await pilot.press("f6")
            await wait_for(pilot, lambda: isinstance(app.screen, StorySummaryDialog))
            app.screen.query_one("#summary-on", Checkbox).value = False
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            assert "Story so far" not in session.build().text
            assert load_chat(session.path).metadata["memory_disabled"] is True

    asyncio.run(go())
