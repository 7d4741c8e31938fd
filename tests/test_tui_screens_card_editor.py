"""Pilot tests of the card editor: every field edits and saves back to a PNG with both chunks."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from textual.app import App
from textual.screen import Screen
from textual.widgets import Input, TabbedContent, TextArea

from rpchat.cards.cardfile import load_card, save_card
from rpchat.cards.model import Card
from rpchat.paths import profile
from rpchat.tui.card_editor import CardEditor, GreetingList, SavedCard
from rpchat.tui.dialogs import ConfirmDialog
from rpchat.tui.themes import STYLESHEET, install_themes, prose_variable_defaults

HOSTILE = "[bold red]shout[/] \x1b[2J cleared?"


class Host(App[None]):
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


def drive(make: Callable[[], Screen[Any]], script: Callable[[Host, Any], Any]) -> Host:
    app = Host(make)

    async def run() -> None:
        async with app.run_test(size=(110, 36)) as pilot:
            await pilot.pause()
            await script(app, pilot)
            await pilot.pause()

    asyncio.run(run())
    return app


def text_chunks(path: Path) -> dict[str, dict[str, Any]]:
    """The card JSON of each tEXt chunk (chara, ccv3) in a PNG, read byte by byte."""
    raw = path.read_bytes()
    pos, found = 8, {}
    while pos < len(raw):
        length = int.from_bytes(raw[pos:pos + 4], "big")
        kind, data = raw[pos + 4:pos + 8], raw[pos + 8:pos + 8 + length]
        assert int.from_bytes(raw[pos + 8 + length:pos + 12 + length], "big") == zlib.crc32(kind + data)
        if kind == b"tEXt":
            key, value = data.split(b"\0", 1)
            found[key.decode()] = json.loads(base64.b64decode(value))
        pos += 12 + length
    return found


@pytest.fixture
def card_file(tmp_path: Path) -> Path:
    card = Card(
        name="Marisol",
        description=HOSTILE,
        scenario="Gull Island.",
        first_mes='*throws a blanket over you.* "Up you get."',
        alternate_greetings=["Second hello.", "Third hello."],
        tags=["island"],
        character_book={"name": "Gull lore", "entries": [{"keys": ["gull"], "content": "Gulls steal."}]},
        spec="chara_card_v3",
    )
    path = profile().cards_dir / "Marisol.png"
    path.parent.mkdir(parents=True)
    save_card(card, path)
    return path


def test_hostile_card_text_shows_literally(card_file: Path) -> None:
    async def script(app: Host, pilot: Any) -> None:
        screen = app.screen
        screen.query_one("#tabs", TabbedContent).active = "tab-description"
        await pilot.pause()
        area = screen.query_one("#f-description", TextArea)
        assert area.text == "[bold red]shout[/] ␛[2J cleared?"
        svg = app.export_screenshot()
        assert "\x1b" not in svg
        assert "[bold&#160;red]shout[/]" in svg
        await pilot.press("escape")  # nothing changed: closes without asking

    app = drive(lambda: CardEditor(load_card(card_file), card_file), script)
    assert app.results == [None]


def test_edit_every_kind_of_field_and_save_png_with_both_chunks(card_file: Path) -> None:
    async def script(app: Host, pilot: Any) -> None:
        screen = app.screen
        screen.query_one("#f-nickname", Input).value = "Mari"
        screen.query_one("#f-creator", Input).value = "rpchat tests"
        screen.query_one("#f-character-version", Input).value = "1.1"
        screen.query_one("#f-tags", Input).value = "island, slice of life, island"
        screen.query_one("#f-system-prompt", TextArea).text = "Write in third person."
        screen.query_one("#f-post-history-instructions", TextArea).text = "Stay in character."
        screen.query_one("#f-creator-notes", TextArea).text = "Made for tests."
        screen.query_one("#f-extensions", TextArea).text = '{"depth_prompt": {"depth": 4}}'
        # Greetings: edit the second, remove the first, add a new one.
        screen.query_one("#tabs", TabbedContent).active = "tab-greetings"
        await pilot.pause()
        greetings = screen.query_one("#f-alternate-greetings", GreetingList)
        greetings.query_one(TextArea).text = "First hello, edited."
        greetings.add_greeting()
        await pilot.pause()
        greetings.query_one(TextArea).text = "A brand new hello."
        await pilot.press("ctrl+s")

    app = drive(lambda: CardEditor(load_card(card_file), card_file), script)
    assert len(app.results) == 1 and isinstance(app.results[0], SavedCard)
    assert app.results[0].path == card_file
    card = load_card(card_file)
    assert card.nickname == "Mari" and card.creator == "rpchat tests" and card.character_version == "1.1"
    assert card.tags == ["island", "slice of life"]
    assert card.system_prompt == "Write in third person."
    assert card.post_history_instructions == "Stay in character."
    assert card.creator_notes == "Made for tests."
    assert card.extensions.get("depth_prompt") == {"depth": 4}
    assert card.alternate_greetings == ["First hello, edited.", "Third hello.", "A brand new hello."]
    assert card.description == HOSTILE  # untouched fields keep their exact text
    assert card.modification_date is not None and card.creation_date is not None
    assert card.character_book is not None and card.character_book["entries"][0]["content"] == "Gulls steal."
    chunks = text_chunks(card_file)
    assert chunks["chara"]["spec"] == "chara_card_v2" and chunks["ccv3"]["spec"] == "chara_card_v3"
    assert chunks["ccv3"]["data"]["nickname"] == "Mari"
    for data in chunks.values():
        assert data["data"]["alternate_greetings"][-1] == "A brand new hello."


def test_remove_greeting_and_bad_json_is_refused(card_file: Path) -> None:
    before = card_file.read_bytes()

    async def script(app: Host, pilot: Any) -> None:
        screen = app.screen
        screen.query_one("#f-name", Input).value = "  "
        screen.query_one("#f-character-book", TextArea).text = '{"entries": [1,'
        await pilot.press("ctrl+s")
        await pilot.pause()
        problems = str(screen.query_one("#problems").render())
        assert "Name: a card needs a name" in problems and "Lorebook: bad JSON at line 1" in problems
        assert card_file.read_bytes() == before  # nothing written
        screen.query_one("#f-name", Input).value = "Marisol"
        screen.query_one("#f-character-book", TextArea).text = ""
        greetings = screen.query_one("#f-alternate-greetings", GreetingList)
        greetings.remove_greeting()
        await pilot.press("ctrl+s")

    app = drive(lambda: CardEditor(load_card(card_file), card_file), script)
    assert isinstance(app.results[0], SavedCard)
    card = load_card(card_file)
    assert card.alternate_greetings == ["Third hello."]
    assert card.character_book is None


def test_closing_with_changes_asks_first(card_file: Path) -> None:
    async def script(app: Host, pilot: Any) -> None:
        app.screen.query_one("#f-name", Input).value = "Somebody else"
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("y")

    app = drive(lambda: CardEditor(load_card(card_file), card_file), script)
    assert app.results == [None]
    assert load_card(card_file).name == "Marisol"


def test_new_card_is_saved_as_png_in_the_cards_folder() -> None:
    async def script(app: Host, pilot: Any) -> None:
        app.screen.query_one("#f-name", Input).value = "Nova"
        app.screen.query_one("#f-first-mes", TextArea).text = "Hi, I'm Nova."
        await pilot.press("ctrl+s")

    app = drive(lambda: CardEditor(Card(name="New character")), script)
    saved = app.results[0]
    assert isinstance(saved, SavedCard)
    assert saved.path == profile().cards_dir / "Nova.png"
    assert load_card(saved.path).first_mes == "Hi, I'm Nova."
    assert set(text_chunks(saved.path)) >= {"chara", "ccv3"}


def test_change_picture_from_a_file(card_file: Path, tmp_path: Path) -> None:
    picture = tmp_path / "new face.png"
    Image.new("RGB", (33, 44), (200, 30, 30)).save(picture)

    async def script(app: Host, pilot: Any) -> None:
        await pilot.click("#change-avatar")
        await pilot.pause()
        app.screen.query_one(Input).value = str(picture)
        await pilot.press("enter")
        await pilot.pause()
        await pilot.press("ctrl+s")

    app = drive(lambda: CardEditor(load_card(card_file), card_file), script)
    assert isinstance(app.results[0], SavedCard)
    avatar = load_card(card_file).avatar
    assert avatar is not None
    with Image.open(io.BytesIO(avatar)) as image:
        assert image.size == (33, 44)
    assert set(text_chunks(card_file)) >= {"chara", "ccv3"}


def test_a_bad_picture_file_is_named_as_an_image_not_a_card(card_file: Path, tmp_path: Path) -> None:
    before = load_card(card_file).avatar
    (tmp_path / "notes.png").write_text("not a picture", encoding="utf-8")
    with open(tmp_path / "huge.png", "wb") as f:
        f.truncate(17 * 2**20)  # sparse: over the 16 MiB cap without writing it
    messages: list[str] = []

    async def script(app: Host, pilot: Any) -> None:
        for name in ("huge.png", "notes.png"):
            await pilot.click("#change-avatar")
            await pilot.pause()
            app.screen.query_one(Input).value = str(tmp_path / name)
            await pilot.press("enter")
            await pilot.pause()
        messages.extend(n.message for n in app._notifications)
        await pilot.press("ctrl+s")

    drive(lambda: CardEditor(load_card(card_file), card_file), script)
    assert any("huge.png: file is larger than 16 MiB" in m for m in messages), messages
    assert any("notes.png: not a picture file Pillow can read" in m for m in messages), messages
    assert not any("card file" in m for m in messages)
    assert load_card(card_file).avatar == before  # the card keeps its picture
