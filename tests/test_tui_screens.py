"""Pilot tests of the small screens: dialogs, avatar, prompt inspector, persona and scenario editor."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from textual.app import App
from textual.screen import Screen
from textual.widgets import ContentSwitcher, Input, OptionList, Static, TextArea

from rpchat.cards.model import Card
from rpchat.chat.model import Chat
from rpchat.paths import profile
from rpchat.personas import Persona, PersonaBook
from rpchat.prompt.builder import BuiltPrompt, build_prompt
from rpchat.prompt.formats import load_format
from rpchat.prompt.segments import Segment
from rpchat.tui.avatar import AvatarView, render_avatar
from rpchat.tui.dialogs import ConfirmDialog, ErrorDialog, PathPrompt, TextPrompt
from rpchat.tui.inspector import PromptInspector
from rpchat.tui.persona_editor import PersonaChoice, PersonaEditor
from rpchat.tui.themes import STYLESHEET, install_themes, prose_variable_defaults

HOSTILE = "[bold red]shout[/] \x1b[2J cleared?"


class Host(App[None]):
    """A bare app that pushes one screen and records what it dismisses with."""

    CSS_PATH = STYLESHEET  # the app's sheet, which styles every screen

    def __init__(self, make: Callable[[], Screen[Any]]) -> None:
        super().__init__()
        self.make = make
        self.results: list[Any] = []

    def get_theme_variable_defaults(self) -> dict[str, str]:
        return prose_variable_defaults()

    def on_mount(self) -> None:
        install_themes(self, "rpchat-dark")
        self.push_screen(self.make(), self.results.append)


def drive(make: Callable[[], Screen[Any]], script: Callable[[Host, Any], Any],
          size: tuple[int, int] = (100, 32)) -> Host:
    """Run ``script(app, pilot)`` against a host app showing the screen ``make()`` builds."""
    app = Host(make)

    async def run() -> None:
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            await script(app, pilot)
            await pilot.pause()

    asyncio.run(run())
    return app


def png_bytes(top: tuple[int, int, int], bottom: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> bytes:
    image = Image.new("RGB", size, top)
    for x in range(size[0]):
        for y in range(size[1] // 2, size[1]):
            image.putpixel((x, y), bottom)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


# --- dialogs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("keys", "expected"), [(["y"], True), (["n"], False), (["escape"], False)])
def test_confirm_dialog_answers(keys: list[str], expected: bool) -> None:
    async def script(app: Host, pilot: Any) -> None:
        await pilot.press(*keys)

    app = drive(lambda: ConfirmDialog("Delete Marisol?"), script)
    assert app.results == [expected]


def test_confirm_dialog_for_danger_focuses_no_so_enter_is_safe() -> None:
    async def script(app: Host, pilot: Any) -> None:
        await pilot.press("enter")

    app = drive(lambda: ConfirmDialog("Delete?", danger=True), script)
    assert app.results == [False]


@pytest.mark.parametrize(("keys", "expected"), [
    (["right", "enter"], True),  # from "No" (focused: danger) to "Delete", on its right
    (["right", "right", "enter"], True),  # stops at the last button, no wrap-around
    (["right", "left", "enter"], False),
    (["left", "enter"], False),
    (["tab", "enter"], True),  # Tab still moves too
])
def test_confirm_dialog_left_right_move_between_the_buttons(keys: list[str], expected: bool) -> None:
    async def script(app: Host, pilot: Any) -> None:
        await pilot.press(*keys)

    app = drive(lambda: ConfirmDialog("Delete?", yes="Delete", danger=True), script)
    assert app.results == [expected]


def test_text_prompt_refuses_empty_then_returns_text() -> None:
    async def script(app: Host, pilot: Any) -> None:
        await pilot.press("enter")
        assert "enter a value" in str(app.screen.query_one("#error", Static).render())
        assert app.results == []
        await pilot.press(*"Theo", "enter")

    app = drive(lambda: TextPrompt("Name?"), script)
    assert app.results == ["Theo"]


def test_path_prompt_checks_existence_and_suffix(tmp_path: Path) -> None:
    card = tmp_path / "card.png"
    card.write_bytes(b"x")
    other = tmp_path / "notes.txt"
    other.write_text("x")

    async def script(app: Host, pilot: Any) -> None:
        box = app.screen.query_one(Input)
        box.value = str(tmp_path / "missing.png")
        await pilot.press("enter")
        assert "no such file" in str(app.screen.query_one("#error", Static).render())
        box.value = str(other)
        await pilot.press("enter")
        assert "expected .png, .json" in str(app.screen.query_one("#error", Static).render())
        box.value = str(card)
        await pilot.press("enter")

    app = drive(lambda: PathPrompt("Import card", suffixes=(".png", ".json")), script)
    assert app.results == [card]


def test_a_save_path_in_a_missing_folder_is_refused_in_place(tmp_path: Path) -> None:
    """An export dialog suggests a path; a user who types a whole path after it (".../chat.jsonl/tmp/out.jsonl")
    must hear that no such folder exists, not get a tree of new folders named after the suggested file."""
    suggested = tmp_path / "chat.jsonl"

    async def script(app: Host, pilot: Any) -> None:
        await pilot.press(*"/tmp/out.jsonl", "enter")
        assert "no such folder" in str(app.screen.query_one("#error", Static).render())
        app.screen.query_one(Input).value = str(tmp_path / "out.jsonl")
        await pilot.press("enter")

    app = drive(lambda: PathPrompt("Export", str(suggested), must_exist=False, suffixes=(".jsonl",)), script)
    assert app.results == [tmp_path / "out.jsonl"]
    assert not suggested.exists()


def test_dialogs_show_hostile_text_literally() -> None:
    async def script(app: Host, pilot: Any) -> None:
        svg = app.export_screenshot()
        assert "\x1b" not in svg
        assert "[bold&#160;red]shout[/]" in svg and "␛[2J" in svg
        await pilot.press("escape")

    app = drive(lambda: ErrorDialog(HOSTILE), script)
    assert app.results == [None]


# --- avatar ----------------------------------------------------------------------------------------------
def test_half_block_avatar_uses_upper_pixel_as_foreground_and_lower_as_background() -> None:
    text = render_avatar(png_bytes((255, 0, 0), (0, 0, 255), (2, 2)), 2, 1)
    assert text.plain == "▀▀"
    style = text.spans[0].style
    assert not isinstance(style, str)
    assert style.color is not None and style.color.triplet == (255, 0, 0)
    assert style.bgcolor is not None and style.bgcolor.triplet == (0, 0, 255)


def test_avatar_fits_the_box_and_keeps_aspect() -> None:
    tall = png_bytes((10, 200, 10), (10, 10, 200), (40, 160))
    lines = render_avatar(tall, 24, 10).plain.split("\n")
    assert len(lines) == 10
    assert max(len(line) for line in lines) <= 24
    assert len(lines[0].strip()) == 5  # 40x160 scaled into 20 pixel rows -> 5 columns


def test_avatar_of_broken_bytes_is_a_placeholder() -> None:
    assert render_avatar(b"\x89PNG not really", 10, 5).plain == "(no picture)"


def test_avatar_view_renders_in_an_app() -> None:
    from textual.app import ComposeResult

    class AvatarApp(App[None]):
        def compose(self) -> ComposeResult:
            yield AvatarView(png_bytes((255, 255, 0), (0, 255, 255)))

    async def run() -> None:
        app = AvatarApp()
        async with app.run_test() as pilot:
            await pilot.pause()
            assert "▀" in app.export_screenshot()

    asyncio.run(run())


# --- prompt inspector ------------------------------------------------------------------------------------
def built_prompt() -> BuiltPrompt:
    return BuiltPrompt(
        segments=(
            Segment("### Instruction:\n", "template"),
            Segment(f"Marisol's Persona: {HOSTILE}", "user"),
            Segment("\n\n### Response:\n", "template"),
            Segment("Marisol:", "user"),
        ),
        stop=("\n### Input:", "\nTheo:"),
        dropped=(0, 1, 2),
        n_tokens=1204,
        first_kept=3,
        format_name="limarp-v3",
        budget=3696,
    )


def test_inspector_shows_exact_prompt_cut_and_tokens_without_markup() -> None:
    built = built_prompt()

    async def script(app: Host, pilot: Any) -> None:
        screen = app.screen
        assert isinstance(screen, PromptInspector)
        area = screen.query_one("#prompt-text", TextArea)
        assert area.text == built.text.replace("\x1b", "␛")
        summary = str(screen.query_one("#summary", Static).render())
        assert "1,204 tokens" in summary and "n_ctx 4,096" in summary
        assert "3 older turns left out" in summary and "turn 4" in summary
        assert '"\\n### Input:"' in summary
        assert "no entries fired" in str(screen.query_one("#lore", Static).render())
        svg = app.export_screenshot()
        assert "\x1b" not in svg and "[bold&#160;red]shout[/]" in svg
        await pilot.press("t")  # the template view keeps the text literal too
        assert screen.query_one("#views", ContentSwitcher).current == "prompt-segments"
        assert "\x1b" not in app.export_screenshot()
        await pilot.press("c")
        assert app.clipboard == built.text  # the copy is the exact prompt, controls included
        await pilot.press("escape")

    app = drive(lambda: PromptInspector(built, n_ctx=4096, max_new=400), script)
    assert app.results == [None]


def test_inspector_lists_fired_lore_and_the_cut_of_a_real_prompt() -> None:
    card = Card(name="Marisol", description=HOSTILE, first_mes="Hello.", character_book={
        "name": "Gull lore", "entries": [{"keys": ["gull"], "content": "Gulls steal bread.", "comment": "Gulls"}]})
    chat = Chat.start("Marisol", "Theo", card.greetings)
    for i in range(6):
        chat.add(True, f"Do you see gull number {i}? " + "word " * 40)
        chat.add(False, "Yes. " + "more " * 40)
    built = build_prompt(load_format("limarp-v3"), card, Persona("Theo"), chat.turns,
                         counter=lambda text: len(text) // 4 + 1, n_ctx=512, max_new=100)
    assert built.dropped and built.lore_fired

    async def script(app: Host, pilot: Any) -> None:
        lore = str(app.screen.query_one("#lore", Static).render())
        assert "Gulls of Gull lore (key 'gull'" in lore
        summary = str(app.screen.query_one("#summary", Static).render())
        assert f"{len(built.dropped)} older turns left out" in summary
        assert app.screen.query_one("#prompt-text", TextArea).text == built.text.replace("\x1b", "␛")
        await pilot.press("escape")

    drive(lambda: PromptInspector(built, n_ctx=512, max_new=100), script)


# --- persona and scenario editor -------------------------------------------------------------------------
def test_persona_editor_creates_edits_and_returns_choice() -> None:
    book = PersonaBook(personas=[Persona("Theo", "A castaway."), Persona("Ana", HOSTILE)], default="Theo")
    book.save(profile().personas_file)

    async def script(app: Host, pilot: Any) -> None:
        screen = app.screen
        assert isinstance(screen, PersonaEditor)
        # The chat uses Ana; her hostile description shows literally.
        assert screen.query_one("#description", TextArea).text == HOSTILE.replace("\x1b", "␛")
        await pilot.press("ctrl+n")
        await pilot.press(*"Mira", "enter")
        await pilot.pause()
        screen.query_one("#description", TextArea).text = "A lighthouse keeper."
        screen.query_one("#scenario", TextArea).text = "A storm traps everyone in the lighthouse."
        await pilot.press("ctrl+s")

    app = drive(lambda: PersonaEditor(PersonaBook.load(), persona="Ana", scenario=None,
                                      card_scenario="Gull Island."), script)
    assert app.results == [PersonaChoice("Mira", "A storm traps everyone in the lighthouse.")]
    saved = PersonaBook.load()
    assert saved.names == ["Theo", "Ana", "Mira"]
    assert saved.get("Mira").description == "A lighthouse keeper."
    assert saved.get("Ana").description == HOSTILE  # untouched: the exact original is kept


def test_persona_editor_switching_keeps_edits_and_empty_scenario_means_card() -> None:
    PersonaBook(personas=[Persona("Theo"), Persona("Ana")], default="Theo").save(profile().personas_file)

    async def script(app: Host, pilot: Any) -> None:
        screen = app.screen
        screen.query_one("#description", TextArea).text = "Edited Theo."
        screen.query_one("#personas", OptionList).highlighted = 1  # move to Ana: Theo's edit is saved
        await pilot.pause()
        assert PersonaBook.load().get("Theo").description == "Edited Theo."
        screen.query_one("#scenario", TextArea).text = "   "
        await pilot.press("ctrl+s")

    app = drive(lambda: PersonaEditor(persona=None, scenario="old override"), script)
    assert app.results == [PersonaChoice("Ana", None)]


def test_persona_editor_cancel_returns_none() -> None:
    async def script(app: Host, pilot: Any) -> None:
        await pilot.press("escape")

    app = drive(lambda: PersonaEditor(), script)
    assert app.results == [None]
