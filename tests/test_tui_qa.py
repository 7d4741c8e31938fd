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


async def ready_chat(pilot, app: RpchatApp) -> ChatScreen:  # type: ignore[no-untyped-def]
    screen = await open_chat_from_library(pilot, app, NAME)
    await wait_for(pilot, lambda: app.engine_state == "ready")
    return screen


def saved_turns() -> list[str]:
    entries = list_chats(profile().cards_dir / f"{NAME.lower()}.png")
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


def test_edit_box_footer_says_enter_saves_and_esc_cancels(home: Path) -> None:
    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_chat_from_library(pilot, app, NAME)
            screen.session.send("Hello")
            screen.show_chat()
            screen.input.focus()
            assert app.screen.active_bindings["escape"].binding.description == "Stop"
            await pilot.press("up")
            await pilot.pause()
            box = screen.query_one(EditBox)
            # The footer names what Enter and Esc do here (not the message cursor's "Edit turn").
            shown = {key: b.binding.description for key, b in app.screen.active_bindings.items() if b.binding.show}
            assert shown["enter"] == "Save edit" and shown["escape"] == "Cancel edit", shown
            assert "Edit turn" not in shown.values()
            assert "Enter saves" in str(box.border_subtitle) and "Esc cancels" in str(box.border_subtitle)
            await pilot.press("x", "escape")  # cancels: nothing saved
            await pilot.pause()
            assert not screen.query(EditBox) and saved_turns()[-1] == "Hello"
            assert app.screen.active_bindings["escape"].binding.description == "Stop"
            await pilot.press("up", "y", "enter")  # saves
            await pilot.pause()
            assert not screen.query(EditBox) and saved_turns()[-1] == "Helloy"

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


def test_new_card_editor_starts_in_the_name_field(home: Path) -> None:
    from textual.widgets import Input

    from rpchat.tui.card_editor import CardEditor

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            await pilot.press("ctrl+a")
            await wait_for(pilot, lambda: isinstance(app.screen, CardEditor))
            await pilot.pause()
            name = app.screen.query_one("#f-name", Input)
            assert name.has_focus
            name.value = ""
            await pilot.press("Q", "a")
            assert name.value == "Qa"

    asyncio.run(go())


def test_help_table_keeps_actions_and_ids_readable_in_the_dialog_width() -> None:
    from rich.console import Console

    from rpchat.tui.help import help_table

    console = Console(width=86, record=True, color_system=None)
    console.print(help_table({}))
    text = console.export_text()
    assert "Duplicate card" in text and "duplicate_card" in text and "Resume last chat" in text



@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_help_shows_every_heading_whole(home: Path, size: tuple[int, int]) -> None:
    from textual.containers import VerticalScroll
    from textual.widgets import Static

    from rpchat.tui.bindings import KEYS
    from rpchat.tui.help import SCOPE_TITLES, HelpScreen

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            await pilot.press("f1")
            await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
            await pilot.pause()
            body = app.screen.query_one(VerticalScroll).query_one(Static)
            lines = [body.render_line(y).text.strip() for y in range(body.virtual_size.height)]
            for title in [*SCOPE_TITLES.values(), "Editing a turn"]:
                assert title in lines, (title, lines)
            assert any(line.startswith("Export this chat") for line in lines)
            ids = " ".join(line.split()[-1] for line in lines if line)
            assert all(spec.id in ids.split() for spec in KEYS), ids  # no id cut short either
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen))

    asyncio.run(go())


def test_palette_lists_quit_once(home: Path) -> None:
    from rpchat.tui.commands import RpchatCommands

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            system = [c.title for c in app.get_system_commands(app.screen)]
            ours = [str(h.text) async for h in RpchatCommands(app.screen).discover()]
            assert (system + ours).count("Quit") == 1
            assert "Theme" in system  # the theme switcher stays

    asyncio.run(go())


def test_narrow_terminal_hides_the_sidebar_and_keeps_the_status_on_one_line(home: Path) -> None:
    from textual.widgets import Static

    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await ready_chat(pilot, app)
            await pilot.pause()
            assert not screen.query_one("#sidebar").display
            status = screen.query_one("#status", Static)
            assert status.size.width >= 76  # the whole width, not what the sidebar leaves
            assert "length" in screen.status_text()
            await pilot.resize_terminal(120, 40)
            await pilot.pause()
            assert screen.query_one("#sidebar").display

    asyncio.run(go())


def test_status_warns_when_the_prompt_cannot_fit_the_context(home: Path, tiny_model: Path) -> None:
    config = tiny_config(tiny_model)
    config.engine = EngineConfig(model=str(tiny_model), n_ctx=256, n_threads=1)
    write_profile_config(config)
    make_card(profile().cards_dir, NAME, description="lorem ipsum dolor " * 200)

    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(140, 40)) as pilot:
            screen = await ready_chat(pilot, app)
            await wait_for(pilot, lambda: "ctx ?" not in screen.status_text())
            assert "/256 (too long" in screen.status_text()

    asyncio.run(go())


# --- terminal injection through editable boxes (a raw ESC in a TextArea reaches the terminal) ----------

ESC_TEXT = 'Hi \x1b[2J there "\x1b]0;pwned\x07"'


def test_edit_box_shows_control_characters_inert_and_keeps_the_original_if_untouched(home: Path) -> None:
    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await ready_chat(pilot, app)
            screen.session.send(ESC_TEXT)
            screen.show_chat()
            screen.input.focus()
            await pilot.press("up")
            box = screen.query_one(EditBox)
            assert "\x1b" not in box.text and "\x07" not in box.text and "\u241b[2J" in box.text
            await pilot.press("enter")  # saved untouched: the exact original text stays
            await pilot.pause()
            assert saved_turns()[-1] == ESC_TEXT
            screen.input.focus()
            await pilot.press("up", "!", "enter")
            await pilot.pause()
            assert "\x1b" not in saved_turns()[-1] and saved_turns()[-1].endswith("!")

    asyncio.run(go())


def test_pasted_control_characters_are_made_inert_in_the_input(home: Path) -> None:
    from textual import events

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_chat_from_library(pilot, app, NAME)
            screen.input.focus()
            screen.input.post_message(events.Paste(ESC_TEXT))
            await pilot.pause()
            assert "\x1b" not in screen.input.text and "\u241b[2J" in screen.input.text

    asyncio.run(go())


def test_impersonated_text_with_control_characters_is_inert_in_the_input(home: Path) -> None:
    from rpchat.tui.bench import PacedEngine, PacedGeneration

    class HostileEngine(PacedEngine):
        def stream(self, prompt, sampling, stop=(), cancel=None, progress=None):  # type: ignore[no-untyped-def]
            return PacedGeneration(["\x1b[2J", " Theo", " waves \x1b]0;x\x07"], 0.001, cancel)

    async def go() -> None:
        app = RpchatApp(engine_factory=lambda _cfg: HostileEngine())
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await ready_chat(pilot, app)
            await pilot.press("ctrl+t")
            await pilot.pause()
            await wait_for(pilot, lambda: not screen.generating)
            await pilot.pause()
            text = screen.input.text
            assert "Theo waves" in text and "\x1b" not in text and "\x07" not in text

    asyncio.run(go())


def test_notifications_show_control_characters_in_file_names_inert(home: Path) -> None:
    bad = profile().cards_dir / "x\x1b[2Jy.json"
    bad.write_text("garbage")

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            await pilot.press("x", "enter")  # the broken card in the library: the error names the file
            await pilot.pause()
            messages = [n.message for n in app._notifications]
            assert any("y.json" in m for m in messages)
            assert not any("\x1b" in m for m in messages)

    asyncio.run(go())


def test_palette_finds_the_prompt_inspector_by_name(home: Path) -> None:
    from rpchat.tui.commands import RpchatCommands

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_chat_from_library(pilot, app, NAME)
            found = [str(h.text) async for h in RpchatCommands(screen).search("inspector")]
            assert found and "Prompt inspector" in found[0]

    asyncio.run(go())


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_toasts_never_cover_the_input_or_the_status_line(home: Path, size: tuple[int, int]) -> None:
    from textual.widgets._toast import Toast, ToastHolder, ToastRack

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=size, notifications=True) as pilot:
            screen = await open_chat_from_library(pilot, app, NAME)
            screen.input.text = "a long draft\n" * 12  # the input at its tallest
            for i in range(4):
                app.notify(f"Notice {i}: a message that wraps over two lines in a narrow terminal")
            await pilot.pause(0.3)
            toasts = (Toast, ToastHolder, ToastRack)
            shown = set()
            for y in range(size[1]):
                for x in range(size[0]):
                    widget, _ = screen.get_widget_at(x, y)
                    if isinstance(widget, toasts):
                        shown.add(y)
            assert shown, "no toast is visible"
            for region in (screen.input.region, screen.query_one("#status").region):
                assert region.height
                covered = {y for y in shown if region.y <= y < region.bottom}
                for y in covered:
                    for x in range(region.x, region.right):
                        widget, _ = screen.get_widget_at(x, y)
                        assert not isinstance(widget, toasts), (x, y, region)
            # The newest notice is the one in sight.
            newest = [t for t in screen.get_child_by_type(ToastRack).query(Toast) if "Notice 3" in str(t.render())]
            assert newest and newest[0].region.height
            x, y = newest[0].region.center
            assert screen.get_widget_at(x, y)[0] is newest[0]
    asyncio.run(go())


def test_settings_call_the_no_length_choice_auto_like_the_chat(home: Path) -> None:
    from textual.widgets import Select

    from rpchat.tui.settings import SettingsScreen

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_chat_from_library(pilot, app, NAME)
            screen.session.set_length(None)
            screen.update_sidebar()
            assert "[auto]" in str(screen.query_one("#length").render())
            await pilot.press("f2")
            await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen))
            await pilot.pause()
            length = app.screen.query_one("#default-length", Select)
            length.value = ""
            await pilot.pause()
            assert "auto (the model decides)" in str(length.query_one("SelectCurrent Static#label").render())

    asyncio.run(go())
