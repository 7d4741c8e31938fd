"""The chat screen driven by Pilot, with the real llama.cpp engine on the tiny test model.

Only the stop/quit tests use `PacedEngine` (a stand-in that streams at a fixed pace), because
they need a reply that is still running when the key arrives.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import llama_cpp
import pytest
from session_support import make_card, open_chat_from_library, tiny_config, wait_for, write_profile_config

from rpchat.chat.library import list_chats
from rpchat.chat.model import Chat
from rpchat.chat.store import ChatStore, load_chat
from rpchat.engine.base import EngineInfo
from rpchat.paths import profile
from rpchat.tui.app import RpchatApp
from rpchat.tui.bench import PacedEngine
from rpchat.tui.chat import ChatInput, ChatScreen, EditBox
from rpchat.tui.transcript import WINDOW, CutMarker, Transcript, TurnView

NAME = "Zephyrine"


def run(coro) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(coro)


def chat_file() -> Chat:
    entries = list_chats(profile().cards_dir / f"{NAME.lower()}.png")
    assert len(entries) == 1
    return load_chat(entries[0].path)


async def ready_chat(pilot, app: RpchatApp) -> ChatScreen:  # type: ignore[no-untyped-def]
    screen = await open_chat_from_library(pilot, app, NAME)
    await wait_for(pilot, lambda: app.engine_state == "ready")
    return screen


async def send(pilot, screen: ChatScreen, text: str) -> None:  # type: ignore[no-untyped-def]
    screen.input.focus()
    screen.input.text = text
    await pilot.press("enter")
    await pilot.pause()
    await wait_for(pilot, lambda: not screen.generating)


def test_send_streams_reply_saves_and_shows_status(home: Path) -> None:
    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await ready_chat(pilot, app)
            await send(pilot, screen, "Where am I?")
            chat = chat_file()
            assert [t.is_user for t in chat.turns] == [False, True, False]
            assert chat.turns[1].text == "Where am I?"
            assert not chat.turns[2].unfinished
            assert len(screen.turn_views()) == 3
            assert screen.transcript.streaming is None
            status = screen.status_text()
            assert "tiny" in status and "/1,024" in status and "tok/s" in status
            assert "CPU" in status or llama_cpp.llama_supports_gpu_offload()  # a GPU build names its GPU
            assert "preset deterministic" in status
            # An empty Enter after your own message asks for a reply (here: none pending, so nothing).
            assert screen.input.text == ""

    run(go())


def test_enter_sends_shift_enter_and_ctrl_j_make_newlines(home: Path) -> None:
    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await ready_chat(pilot, app)
            await pilot.press("h", "shift+enter", "i", "ctrl+j", "x")
            assert screen.input.text == "h\ni\nx"
            assert len(chat_file().turns) == 1

    run(go())


def test_length_key_cycles_and_is_remembered_per_chat(home: Path) -> None:
    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await ready_chat(pilot, app)
            assert "[medium]" in str(screen.query_one("#length").render())
            await pilot.press("ctrl+l")
            assert "[long]" in str(screen.query_one("#length").render())
            assert chat_file().length == "long"
            await pilot.press("ctrl+b")
            await wait_for(pilot, lambda: not isinstance(app.screen, ChatScreen))
            await pilot.press("ctrl+o")  # resume the last chat
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            assert app.screen.session.length == "long"  # type: ignore[attr-defined]

    run(go())


def test_regenerate_and_swipe_keys(home: Path) -> None:
    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await ready_chat(pilot, app)
            # Greeting swipes are the alternate greetings (left/right with an empty input).
            await pilot.press("right")
            assert chat_file().turns[0].swipe_id == 1
            assert "2/2" in str(screen.turn_views()[0].render())
            await send(pilot, screen, "Hello")
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: not screen.generating and len(chat_file().turns[-1].swipes) == 2)
            assert chat_file().turns[-1].swipe_id == 1
            await pilot.press("alt+left")
            assert chat_file().turns[-1].swipe_id == 0
            await pilot.press("right")
            assert chat_file().turns[-1].swipe_id == 1
            # Swiping right past the last swipe writes a new one.
            await pilot.press("right")
            await pilot.pause()
            await wait_for(pilot, lambda: not screen.generating and len(chat_file().turns[-1].swipes) == 3)
            assert len(screen.turn_views()) == 3

    run(go())


def test_continue_and_impersonate(home: Path) -> None:
    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await ready_chat(pilot, app)
            await send(pilot, screen, "Hello")
            before = chat_file().turns[-1].text
            await pilot.press("ctrl+g")
            await pilot.pause()
            await wait_for(pilot, lambda: not screen.generating)
            after = chat_file().turns[-1]
            assert after.text.startswith(before) and len(after.swipes) == 1
            turns = len(chat_file().turns)
            await pilot.press("ctrl+t")
            await pilot.pause()
            await wait_for(pilot, lambda: not screen.generating)
            result = screen.session.last_result
            assert result is not None and screen.input.text == result.text.strip()
            assert len(chat_file().turns) == turns

    run(go())


def test_up_edits_last_message_in_place_and_cursor_ops(home: Path) -> None:
    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await ready_chat(pilot, app)
            await send(pilot, screen, "Hello")
            await pilot.press("up")
            box = screen.query_one(EditBox)
            assert box.text == "Hello" and box.index == 1
            box.text = "Hello again"
            await pilot.press("enter")
            await pilot.pause()
            assert not screen.query(EditBox)
            assert chat_file().turns[1].text == "Hello again"
            # The message cursor: copy, edit the greeting, delete, branch.
            await pilot.press("ctrl+up")
            transcript = screen.query_one(Transcript)
            assert transcript.has_focus and transcript.cursor == 2
            await pilot.press("up", "c")
            assert app.clipboard == "Hello again"
            await pilot.press("up", "e")
            greeting_box = screen.query_one(EditBox)
            assert greeting_box.index == 0
            greeting_box.text = "A new greeting"
            await pilot.press("enter")
            await pilot.pause()
            assert chat_file().turns[0].text == "A new greeting"
            old_path = screen.session.path
            await pilot.press("ctrl+up", "b")
            await pilot.pause()
            assert screen.session.path != old_path
            assert len(load_chat(screen.session.path).turns) == 3
            await pilot.press("ctrl+up", "d")
            await pilot.pause()
            await pilot.press("y")  # deleting a turn asks first
            await pilot.pause()
            assert len(load_chat(screen.session.path).turns) == 2
            assert len(load_chat(old_path).turns) == 3

    run(go())


def test_card_text_with_markup_and_escapes_shows_literally(home: Path) -> None:
    make_card(profile().cards_dir, "Glitch", first_mes="[bold red]not markup[/] \x1b[2J *waves*")

    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_chat_from_library(pilot, app, "Glitch")
            shown = str(screen.turn_views()[0].render())
            assert "[bold red]not markup[/]" in shown
            assert "\x1b" not in shown and "\u241b[2J" in shown
            await wait_for(pilot, lambda: app.engine_state == "ready")
            await send(pilot, screen, "[b]me[/b]")
            assert "[b]me[/b]" in str(screen.turn_views()[1].render())

    run(go())


def test_palette_runs_actions_and_help_lists_remapped_keys(home: Path, tiny_model: Path) -> None:
    config = tiny_config(tiny_model)
    config.keys = {"regenerate": "ctrl+y"}
    write_profile_config(config)

    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await ready_chat(pilot, app)
            await send(pilot, screen, "Hello")
            await pilot.press("ctrl+y")
            await pilot.pause()
            await wait_for(pilot, lambda: not screen.generating and len(chat_file().turns[-1].swipes) == 2)
            await pilot.press("ctrl+p")
            await pilot.pause()
            await pilot.press(*"Regenerate")
            await pilot.pause(0.3)
            await pilot.press("enter")
            await pilot.pause()
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen) and not screen.generating
                           and len(chat_file().turns[-1].swipes) == 3)
            await pilot.press("f1")
            await pilot.pause()
            from rpchat.tui.help import HelpScreen

            assert isinstance(app.screen, HelpScreen)
            assert app.keymap["regenerate"] == "ctrl+y"
            await pilot.press("escape")

    run(go())


def test_help_table_shows_remapped_keys() -> None:
    from rich.console import Console

    from rpchat.tui.help import help_table

    console = Console(width=120, record=True)
    console.print(help_table({"regenerate": "ctrl+y"}))
    text = console.export_text()
    assert "ctrl+y" in text and "Regenerate" in text and "turn_branch" in text


def test_no_model_still_lets_you_browse_and_write(home: Path, tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "missing.gguf")
    write_profile_config(config)

    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_chat_from_library(pilot, app, NAME)
            await wait_for(pilot, lambda: app.engine_state == "failed")
            assert "not found" in screen.status_text()
            screen.input.text = "Hello"
            await pilot.press("enter")
            await pilot.pause()
            assert [t.text for t in chat_file().turns][1:] == ["Hello"]
            assert any("not found" in n.message for n in app._notifications)

    run(go())


def test_long_chat_mounts_lazily_and_loads_more_at_top(home: Path) -> None:
    card_path = profile().cards_dir / f"{NAME.lower()}.png"
    chat = Chat.start(NAME, "User", ["Hello."])
    for i in range(299):
        chat.add(i % 2 == 0, f"Turn {i}")
    from rpchat.chat.library import new_chat_path

    path = new_chat_path(NAME)
    ChatStore(path).save(chat)

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            app.open_chat(card_path, path)
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, ChatScreen)
            views = screen.turn_views()
            assert len(views) == WINDOW and views[-1].index == 299
            screen.transcript.scroll_home(animate=False, immediate=True)
            await pilot.pause()
            await wait_for(pilot, lambda: len(screen.turn_views()) == 2 * WINDOW)
            assert screen.turn_views()[0].index == 300 - 2 * WINDOW

    run(go())


def test_cut_marker_shows_where_old_turns_leave_the_prompt(home: Path, tiny_model: Path) -> None:
    config = tiny_config(tiny_model)
    config.engine.n_ctx = 512
    write_profile_config(config)
    card_path = profile().cards_dir / f"{NAME.lower()}.png"
    chat = Chat.start(NAME, "User", ["Hello."])
    for i in range(40):
        chat.add(i % 2 == 0, f"Turn {i}: the island and the beach and the world.")
    from rpchat.chat.library import new_chat_path

    path = new_chat_path(NAME)
    ChatStore(path).save(chat)

    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: app.engine_state == "ready")
            app.open_chat(card_path, path)
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, ChatScreen)
            await wait_for(pilot, lambda: bool(screen.query(CutMarker)))
            marker = screen.query_one(CutMarker)
            following = screen.transcript.children[screen.transcript.children.index(marker) + 1]
            assert isinstance(following, TurnView) and following.index == screen.transcript.first_kept > 0
            assert "ctx" in screen.status_text()

    run(go())


# --- timing-sensitive: a stand-in engine that streams slowly -------------------------------------------


def paced_app(rate: float = 40.0) -> RpchatApp:
    return RpchatApp(engine_factory=lambda _cfg: PacedEngine(rate=rate, words=2000))


def test_escape_stops_and_keeps_partial_reply(home: Path) -> None:
    async def go() -> None:
        app = paced_app()
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await ready_chat(pilot, app)
            screen.input.text = "Hello"
            await pilot.press("enter")
            await wait_for(pilot, lambda: screen.transcript.streaming is not None
                           and len(screen.transcript.streaming.text) > 20)
            await pilot.press("escape")
            await wait_for(pilot, lambda: not screen.generating)
            reply = chat_file().turns[-1]
            assert not reply.is_user and reply.unfinished and len(reply.text) > 20
            assert screen.session.last_result.finish_reason == "cancelled"  # type: ignore[union-attr]
            assert "unfinished" in str(screen.turn_views()[-1].render())

    run(go())


def test_quit_during_generation_keeps_partial_unfinished(home: Path) -> None:
    async def go() -> None:
        app = paced_app()
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await ready_chat(pilot, app)
            screen.input.text = "Hello"
            await pilot.press("enter")
            await wait_for(pilot, lambda: screen.transcript.streaming is not None
                           and len(screen.transcript.streaming.text) > 20)
            shown = screen.transcript.streaming.text  # type: ignore[union-attr]
            await pilot.press("ctrl+q")
            await pilot.pause(0.5)
        reply = chat_file().turns[-1]
        assert not reply.is_user and reply.unfinished
        assert reply.text.startswith(shown.strip()[:20])

    run(go())


def test_input_box_is_a_text_area_with_placeholder(home: Path) -> None:
    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_chat_from_library(pilot, app, NAME)
            assert isinstance(screen.input, ChatInput)
            assert "Shift+Enter" in str(screen.input.placeholder)

    run(go())


def test_view_follows_the_stream_only_when_at_the_bottom(home: Path) -> None:
    card_path = profile().cards_dir / f"{NAME.lower()}.png"
    chat = Chat.start(NAME, "User", ["Hello."])
    for i in range(30):
        chat.add(i % 2 == 0, f"Turn {i}: " + "the island and the beach. " * 6)
    from rpchat.chat.library import new_chat_path

    path = new_chat_path(NAME)
    ChatStore(path).save(chat)

    async def go() -> None:
        app = paced_app(rate=60.0)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: app.engine_state == "ready")
            app.open_chat(card_path, path)
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, ChatScreen)
            transcript = screen.transcript
            await wait_for(pilot, lambda: transcript.max_scroll_y > 0 and transcript.scroll_y == transcript.max_scroll_y)
            screen.generate("reply")
            await wait_for(pilot, lambda: transcript.streaming is not None and len(transcript.streaming.text) > 10)
            transcript.scroll_home(animate=False, immediate=True)  # the user scrolls up to read
            await pilot.pause()
            height = transcript.max_scroll_y
            await wait_for(pilot, lambda: transcript.max_scroll_y > height + 2)
            assert transcript.scroll_y == 0  # it did not jump back down
            transcript.scroll_end(animate=False, immediate=True)  # back at the bottom: follow again
            await pilot.pause()
            height = transcript.max_scroll_y
            await wait_for(pilot, lambda: transcript.max_scroll_y > height + 2
                           and transcript.scroll_y == transcript.max_scroll_y)
            await pilot.press("escape")
            await wait_for(pilot, lambda: not screen.generating)

    run(go())


def test_clicking_a_turn_puts_the_message_cursor_on_it(home: Path) -> None:
    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_chat_from_library(pilot, app, NAME)
            greeting = screen.turn_views()[0]
            await pilot.click(greeting)
            assert screen.transcript.has_focus and screen.transcript.cursor == 0
            assert greeting.has_class("-cursor")
            await pilot.press("c")
            assert app.clipboard == chat_file().turns[0].text

    run(go())


class LongNamedEngine(PacedEngine):
    """A paced engine named like a real fine-tune served remotely: the longest status line there is."""

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(model_name="Mistral-7B-Instruct-v0.2-LimaRP-ZLoss-DARE-TIES.Q4_K_M",
                          backend="remote (llama.cpp server)", n_ctx=self.n_ctx)


@pytest.mark.parametrize("size", [(140, 40), (120, 40), (100, 30), (80, 24)])
def test_status_line_keeps_the_state_and_the_stop_key_at_any_width(home: Path, size: tuple[int, int]) -> None:
    async def go() -> None:
        app = RpchatApp(engine_factory=lambda _cfg: LongNamedEngine(rate=40.0, words=2000))
        async with app.run_test(size=size) as pilot:
            screen = await ready_chat(pilot, app)
            await wait_for(pilot, lambda: "ctx ?" not in screen.status_text())
            status = screen.query_one("#status")
            screen.input.text = "Hello"
            await pilot.press("enter")
            await wait_for(pilot, lambda: screen.generating == "reply" and screen.transcript.streaming is not None)
            await pilot.pause()
            drawn = status.render_line(0).text.strip()
            # What is drawn fits: nothing cut off at the end, the state and the stop key are there.
            assert "\u2026" not in drawn[-2:], drawn
            assert drawn.endswith(("esc stops", "esc stops)")), drawn
            assert "len medium" in drawn or "length medium" in drawn, drawn
            assert "/8,192" in drawn, drawn
            if size[0] >= 140:
                assert "Mistral-7B" in drawn and "length medium" in drawn, drawn
            await pilot.press("escape")
            await wait_for(pilot, lambda: not screen.generating)

    run(go())
