"""SillyTavern import in the TUI: from the palette and from the settings screen, then picked and used."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from session_support import open_chat_from_library, wait_for
from textual.widgets import Button, Input, Select

from rpchat.config import load_config
from rpchat.engine.presets import load_preset
from rpchat.paths import profile
from rpchat.prompt import load_format
from rpchat.tui.app import RpchatApp
from rpchat.tui.dialogs import PathPrompt
from rpchat.tui.settings import SettingsScreen

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NAME = "Wenonah"


async def answer(pilot: Any, app: RpchatApp, text: str) -> None:
    app.screen.query_one(Input).value = text
    await pilot.press("enter")


def notes(app: RpchatApp) -> str:
    return " ".join(f"{n.title} {n.message}" for n in app._notifications)


def test_palette_import_then_pick_it_in_settings_and_chat_uses_it(home: Path) -> None:
    source = home / "Universal-Light.json"
    source.write_bytes((FIXTURES / "st_textgen_Universal-Light.json").read_bytes())

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: type(app.screen).__name__ == "LibraryScreen")
            await pilot.press("ctrl+p")
            await pilot.pause()
            await pilot.press(*"Import SillyTavern p")
            await pilot.pause(0.3)
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, PathPrompt))
            await answer(pilot, app, str(source))
            await wait_for(pilot, lambda: "Imported sampler preset universal-light" in notes(app))
            assert "sampler_order" in notes(app)  # what was not carried over, said once
            assert load_preset("universal-light").sampling.temperature == 1.25

            await pilot.press("f2")
            await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen))
            box = app.screen.query_one("#preset", Select)
            assert "universal-light" in [value for _, value in box._options]
            box.value = "universal-light"
            await pilot.pause()
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: not isinstance(app.screen, SettingsScreen))
            assert load_config(profile()).preset == "universal-light"

            screen = await open_chat_from_library(pilot, app, NAME)
            assert screen.session.preset_name == "universal-light"
            assert screen.session.sampling.temperature == 1.25
            assert "preset universal-light" in str(screen.query_one("#status").render())

    asyncio.run(go())


def test_settings_import_of_instruct_and_context_offers_and_picks_the_format(home: Path) -> None:
    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: type(app.screen).__name__ == "LibraryScreen")
            await pilot.press("f2")
            await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen))
            settings = app.screen
            settings.query_one("#import-format", Button).press()
            await wait_for(pilot, lambda: isinstance(app.screen, PathPrompt))
            await answer(pilot, app, str(FIXTURES / "st_instruct_Alpaca-Roleplay.json"))
            await wait_for(pilot, lambda: isinstance(app.screen, PathPrompt) and "Context" in str(
                app.screen.query_one(".dialog-title").render()))
            await answer(pilot, app, str(FIXTURES / "st_context_Alpaca-Roleplay.json"))
            await wait_for(pilot, lambda: app.screen is settings)
            await wait_for(pilot, lambda: settings.query_one("#format", Select).value == "st_instruct_alpaca-roleplay")
            assert "system_sequence" in notes(app)
            assert load_format("st_instruct_alpaca-roleplay").history_start == "### New Roleplay:\n"
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: app.screen is not settings)
            assert app.config.format == "st_instruct_alpaca-roleplay"

            # An instruct template alone (Esc on the context question) still imports.
            await pilot.press("f2")
            await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen))
            settings = app.screen
            settings.query_one("#import-format", Button).press()
            await wait_for(pilot, lambda: isinstance(app.screen, PathPrompt))
            await answer(pilot, app, str(FIXTURES / "st_instruct_Alpaca.json"))
            await wait_for(pilot, lambda: isinstance(app.screen, PathPrompt) and "Context" in str(
                app.screen.query_one(".dialog-title").render()))
            await pilot.press("escape")
            await wait_for(pilot, lambda: settings.query_one("#format", Select).value == "st_instruct_alpaca")
            assert "default story string" in notes(app)

    asyncio.run(go())


def test_settings_import_of_a_bad_file_is_one_error_and_keeps_the_pick(home: Path) -> None:
    bad = home / "bad.json"
    bad.write_text('{"temp": "hot"}')

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: type(app.screen).__name__ == "LibraryScreen")
            await pilot.press("f2")
            await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen))
            settings = app.screen
            before = settings.query_one("#preset", Select).value
            settings.query_one("#import-preset", Button).press()
            await wait_for(pilot, lambda: isinstance(app.screen, PathPrompt))
            await answer(pilot, app, str(bad))
            await wait_for(pilot, lambda: "bad.json" in notes(app))
            assert app.screen is settings and settings.query_one("#preset", Select).value == before
            assert "Not imported" in notes(app) and "temperature" in notes(app)
            assert not profile().user_presets_dir.exists()

    asyncio.run(go())
