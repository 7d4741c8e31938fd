"""One key registry (rpchat.tui.bindings) for every screen and modal: remappable by id, all listed in F1."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
from pathlib import Path

from session_support import tiny_config, wait_for, write_profile_config
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.dom import DOMNode
from textual.widgets import Static

import rpchat.tui
from rpchat.paths import profile
from rpchat.tui.app import RpchatApp
from rpchat.tui.bindings import BY_ID, KEYS, SCOPE_TITLES
from rpchat.tui.dialogs import ConfirmDialog
from rpchat.tui.help import HelpScreen
from rpchat.tui.library import LibraryScreen

NAME = "Zephyrine"


def _rpchat_nodes() -> list[type[DOMNode]]:
    found: list[type[DOMNode]] = []
    for info in pkgutil.iter_modules(rpchat.tui.__path__):
        module = importlib.import_module(f"rpchat.tui.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, DOMNode) and cls.__module__ == module.__name__:
                found.append(cls)
    return found


def test_every_screen_and_modal_takes_its_keys_from_the_registry() -> None:
    assert len(BY_ID) == len(KEYS), "binding ids must be unique"
    assert {spec.scope for spec in KEYS} <= set(SCOPE_TITLES), "every scope needs an F1 heading"
    nodes = [cls for cls in _rpchat_nodes() if "BINDINGS" in cls.__dict__]
    names = {cls.__name__ for cls in nodes}
    assert {"ConfirmDialog", "CardEditor", "SettingsScreen", "PromptInspector", "HelpScreen", "EditBox",
            "ChatsDialog", "PersonaEditor", "AuthorsNoteDialog", "ModelPicker"} <= names
    for cls in nodes:
        for binding in cls.__dict__["BINDINGS"]:
            assert isinstance(binding, Binding) and binding.id in BY_ID, (cls.__name__, binding)
            spec = BY_ID[binding.id]
            assert (binding.key, binding.action) == (spec.key, spec.action), (cls.__name__, binding)


def _help_lines(app: RpchatApp) -> list[str]:
    body = app.screen.query_one(VerticalScroll).query_one(Static)
    return [body.render_line(y).text.strip() for y in range(body.virtual_size.height)]


def test_a_modals_keys_remap_from_the_config_and_f1_shows_them(home: Path, tiny_model: Path) -> None:
    config = tiny_config(tiny_model)
    config.keys = {"dialog.yes": "j", "help.close": "x"}
    write_profile_config(config)
    card = profile().cards_dir / f"{NAME.lower()}.png"

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, LibraryScreen))
            await pilot.press(*NAME)
            await pilot.press("ctrl+x")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog))
            await pilot.press("y")  # the default key no longer answers
            await pilot.pause()
            assert isinstance(app.screen, ConfirmDialog) and card.exists()
            await pilot.press("j")
            await wait_for(pilot, lambda: isinstance(app.screen, LibraryScreen))
            assert not card.exists()

            await pilot.press("f1")
            await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
            await pilot.pause()
            lines = _help_lines(app)
            for title in SCOPE_TITLES.values():
                assert title in lines, title
            assert any(line.split()[:2] == ["j", "Yes"] and line.endswith("dialog.yes") for line in lines), lines
            await pilot.press("escape")  # remapped away
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("x")
            await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen))

    asyncio.run(go())
