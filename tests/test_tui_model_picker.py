"""The model picker (F8) driven by Pilot: it lists the GGUF files found with their format and fit, and
picking one loads it in the background while the chat stays open, with the new model's format."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from session_support import make_card, open_chat_from_library, wait_for
from tinymodel import write_tiny_model

from rpchat.config import Config, EngineConfig, load_config, save_config
from rpchat.paths import profile
from rpchat.tui.app import RpchatApp
from rpchat.tui.model_picker import ModelPicker

NAME = "Zephyrine"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RPCHAT_HOME", str(tmp_path / "home"))
    models = tmp_path / "models"
    write_tiny_model(models / "plain-tiny.gguf", n_layer=1, name="Plain Tiny")
    write_tiny_model(models / "limamono-7b.Q4_K_M.gguf", n_layer=2, name="Limamono-7B")
    (models / "broken.gguf").write_bytes(b"GGUF nonsense")
    save_config(profile(), Config(engine=EngineConfig(model=str(models / "plain-tiny.gguf"), models_dir=str(models),
                                                      n_ctx=512, n_threads=1), max_new_tokens=8))
    profile().cards_dir.mkdir(parents=True)
    make_card(profile().cards_dir, NAME)
    return tmp_path


def rows(table) -> list[list[str]]:  # type: ignore[no-untyped-def]
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def test_picker_lists_models_and_switches_without_leaving_the_chat(home: Path) -> None:
    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(150, 40)) as pilot:
            chat = await open_chat_from_library(pilot, app, NAME)
            await wait_for(pilot, lambda: app.engine_state == "ready")
            assert chat.session.fmt.name == "limarp-v3"
            await pilot.press("f8")
            await wait_for(pilot, lambda: isinstance(app.screen, ModelPicker))
            picker = app.screen
            table = picker.query_one("DataTable")
            await wait_for(pilot, lambda: table.row_count >= 2)
            listed = {r[0]: r for r in rows(table)}
            assert set(listed) == {"* Plain Tiny", "Limamono-7B"}  # the broken file is left out
            lima = listed["Limamono-7B"]
            assert lima[2] == "F32" and lima[4] == "2,048"
            assert lima[5] == "limamono (Limamono-7B)"
            assert listed["* Plain Tiny"][5] == "limarp-v3 (default)"
            assert lima[6].startswith(("fits: ", "too big: ")) and "GiB free" in lima[6]
            assert lima[7] in ("CPU", "GPU, all layers")
            assert (lima[8], listed["* Plain Tiny"][8]) == ("models folder", "in use")
            # Pick Limamono: it loads in the background, the chat screen stays and takes its format.
            index = [r[0] for r in rows(table)].index("Limamono-7B")
            table.move_cursor(row=index)
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.screen is chat)
            await wait_for(pilot, lambda: app.engine_state == "ready" and app.engine is not None
                           and "Limamono" in app.engine.info.model_name)
            assert chat.session.fmt.name == "limamono"
            assert "format limamono, from the model" in chat.status_text()
            assert any(n.message.startswith("Recognised Limamono-7B") for n in app._notifications)
            assert load_config(profile()).engine.model.endswith("limamono-7b.Q4_K_M.gguf")

    asyncio.run(go())


def test_a_typed_path_that_is_not_a_model_is_reported(home: Path, tmp_path: Path) -> None:
    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(150, 40)) as pilot:
            await wait_for(pilot, lambda: type(app.screen).__name__ == "LibraryScreen")
            await pilot.press("f8")
            await wait_for(pilot, lambda: isinstance(app.screen, ModelPicker))
            picker = app.screen
            box = picker.query_one("#picker-path")
            box.focus()
            box.value = str(tmp_path / "models" / "broken.gguf")
            await pilot.press("enter")
            await wait_for(pilot, lambda: any("broken.gguf" in n.message for n in app._notifications))
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, ModelPicker))

    asyncio.run(go())
