"""The token view in the chat's message cursor, driven by Pilot with the real engine on the tiny model:
a key shows the last reply token by token, an alternative chosen there becomes a new, continued swipe."""

from __future__ import annotations

import asyncio
from pathlib import Path

from session_support import open_chat_from_library, wait_for

from rpchat.chat.library import list_chats
from rpchat.chat.store import load_chat
from rpchat.engine.alternatives import Alternative, TokenStep, TokenTrace
from rpchat.paths import profile
from rpchat.tui.app import RpchatApp
from rpchat.tui.chat import ChatScreen
from rpchat.tui.prose import clean
from rpchat.tui.tokens import TokenScreen

NAME = "Tokala"


def saved_reply():  # type: ignore[no-untyped-def]
    (entry,) = list_chats(profile().cards_dir / f"{NAME.lower()}.png")
    return load_chat(entry.path).turns[-1]


def test_token_view_shows_the_reply_and_an_alternative_makes_a_continued_swipe(home: Path) -> None:
    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_chat_from_library(pilot, app, NAME)
            await wait_for(pilot, lambda: app.engine_state == "ready")
            # The greeting was not generated: a clear notice, no view.
            await pilot.press("ctrl+up", "t")
            await pilot.pause()
            assert isinstance(app.screen, ChatScreen)
            assert any("No token probabilities: token alternatives are kept for the last reply only" in n.message
                       for n in app._notifications)

            screen.input.focus()
            screen.input.text = "Where am I?"
            await pilot.press("enter")
            await wait_for(pilot, lambda: not screen.generating)
            first = saved_reply()
            await pilot.press("ctrl+up", "t")
            await wait_for(pilot, lambda: isinstance(app.screen, TokenScreen))
            view = app.screen
            assert isinstance(view, TokenScreen)
            trace = view.trace
            assert trace.open_text.rstrip() == first.text
            # Every token is drawn, controls made inert; an empty piece (a split character's first byte) is a box.
            assert clean(first.text) in view.token_text().plain.replace("\u21b5\n", "\n").replace("\u25af", "")
            assert len(trace.steps) == screen.session.last_result.tokens_generated  # type: ignore[union-attr]

            # Move to a token that has another whole alternative, and pick it.
            target = next(i for i, s in enumerate(trace.steps[1:], 1)
                          if any(a.token != s.token and a.whole for a in s.top))
            await pilot.press(*["right"] * target)
            assert view.step == target
            shown = view.alternatives_text().plain
            assert f"Token {target + 1}/{len(trace.steps)}" in shown and "(chosen)" in shown
            alt = trace.steps[target].top[view.alt]
            assert alt.token != trace.steps[target].token
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            await wait_for(pilot, lambda: not screen.generating)

            turn = saved_reply()
            prefix = trace.choose(target, alt).open_text
            assert turn.swipes[0] == first.text and turn.swipe_id == 1 and not turn.unfinished
            assert turn.swipes[1].startswith(prefix.rstrip())
            result = screen.session.last_result
            assert result is not None and result.prompt_tokens_evaluated <= 3
            assert any(f"New swipe from token {target + 1}: {result.prompt_tokens_reused:,} prompt tokens reused"
                       in n.message for n in app._notifications)
            assert f"{result.prompt_tokens_reused:,} reused" in screen.status_text()

            # The new swipe has its own token view; Esc closes it without a change.
            await pilot.press("ctrl+up", "t")
            await wait_for(pilot, lambda: isinstance(app.screen, TokenScreen))
            assert app.screen.trace.steps[target].token == alt.token  # type: ignore[attr-defined]
            await pilot.press("escape")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            assert len(saved_reply().swipes) == 2

    asyncio.run(go())


def test_token_text_is_data_not_markup(home: Path) -> None:
    trace = TokenTrace((
        TokenStep("[bold red]x[/]", 0.9, (Alternative("[bold red]x[/]", 0.9, 1), Alternative("[link=evil]", 0.05, 2)), 1),
        TokenStep("\x1b[2J", 0.1, (Alternative("\x1b[2J", 0.1, 3),), 3),
    ))

    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            view = TokenScreen(trace, "[b]#2[/b]")
            app.push_screen(view)
            await pilot.pause()
            assert view.token_text().plain.startswith("[bold red]x[/]")
            assert "\x1b" not in view.token_text().plain
            assert "'[link=evil]'" in view.alternatives_text().plain
            await pilot.press("right")
            assert "\x1b" not in view.alternatives_text().plain.replace("\\x1b", "")

    asyncio.run(go())
