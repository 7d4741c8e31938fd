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
def home(tmp_path: Path) -> Path:
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


@pytest.fixture
def fake_hub(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The loopback Hub, with huggingface_hub pointed at it (as HF_ENDPOINT and HF_HOME do at import)."""
    from hubserver import FakeHub, FakeRepo, start_hub
    from huggingface_hub import constants

    lima = write_tiny_model(tmp_path / "served.gguf", n_layer=2, name="Limamono-7B").read_bytes()
    hub = FakeHub(repos={"example-org/Limamono-7B-GGUF": FakeRepo(
        files={"limamono-7b.Q4_K_M.gguf": lima, "limamono-7b.Q8_0.gguf": bytes(24 << 20)},
        listed_sizes={}, downloads=10)})
    server, url = start_hub(hub)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    yield hub
    server.shutdown()


async def _hub_files(pilot, app):  # type: ignore[no-untyped-def]
    await pilot.press("f8")
    await wait_for(pilot, lambda: isinstance(app.screen, ModelPicker))
    picker = app.screen
    box = picker.query_one("#hub-search")
    assert "Limamono-7B" in box.placeholder  # the seeds are the quick searches
    box.focus()
    box.value = "limamono"
    await pilot.press("enter")
    table = picker.query_one("DataTable")
    await wait_for(pilot, lambda: picker._mode == "repos" and table.row_count == 1)
    assert str(table.get_row_at(0)[0]) == "example-org/Limamono-7B-GGUF"
    table.focus()
    await pilot.press("enter")
    await wait_for(pilot, lambda: picker._mode == "files" and table.row_count == 2)
    return picker, table


def test_a_model_from_the_hub_downloads_and_loads(home: Path, tmp_path: Path, fake_hub) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(150, 40)) as pilot:
            chat = await open_chat_from_library(pilot, app, NAME)
            _, table = await _hub_files(pilot, app)
            names = [str(table.get_row_at(i)[0]) for i in range(2)]
            row = names.index("limamono-7b.Q4_K_M.gguf")
            table.move_cursor(row=row)
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.screen is chat)
            await wait_for(pilot, lambda: app.engine_state == "ready" and app.engine is not None
                           and "Limamono" in app.engine.info.model_name)
            assert chat.session.fmt.name == "limamono"
            model = load_config(profile()).engine.model
            assert "models--example-org--Limamono-7B-GGUF" in model and model.endswith("limamono-7b.Q4_K_M.gguf")

    asyncio.run(go())


def test_esc_cancels_a_hub_download_and_keeps_nothing(home: Path, tmp_path: Path, fake_hub) -> None:  # type: ignore[no-untyped-def]
    fake_hub.slow = 0.0005  # the 24 MiB file takes a few seconds: time to press Esc

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(150, 40)) as pilot:
            await wait_for(pilot, lambda: type(app.screen).__name__ == "LibraryScreen")
            picker, table = await _hub_files(pilot, app)
            names = [str(table.get_row_at(i)[0]) for i in range(2)]
            table.move_cursor(row=names.index("limamono-7b.Q8_0.gguf"))
            await pilot.press("enter")
            note = picker.query_one("#picker-note")
            await wait_for(pilot, lambda: "%" in str(note.render()))  # progress is shown
            await pilot.press("escape")
            await wait_for(pilot, lambda: any("download cancelled" in n.message for n in app._notifications))
            assert app.screen is picker
            blobs = tmp_path / "hf" / "hub" / "models--example-org--Limamono-7B-GGUF" / "blobs"
            assert not blobs.exists() or list(blobs.iterdir()) == []
            assert load_config(profile()).engine.model.endswith("plain-tiny.gguf")

    asyncio.run(go())


def test_with_no_models_found_typing_goes_to_the_path_box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new user with only the demo model opens F8 and types a path: with the list empty the keys used to
    go to the empty table and were lost."""
    from huggingface_hub import constants

    monkeypatch.setenv("HOME", str(tmp_path / "user"))  # no LM Studio folders
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    model = write_tiny_model(tmp_path / "elsewhere" / "tiny.gguf", n_layer=1, name="Elsewhere Tiny")

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(150, 40)) as pilot:
            await wait_for(pilot, lambda: type(app.screen).__name__ == "LibraryScreen")
            await pilot.press("f8")
            await wait_for(pilot, lambda: isinstance(app.screen, ModelPicker))
            picker = app.screen
            await wait_for(pilot, lambda: "No GGUF models found" in str(picker.query_one("#picker-note").render()))
            await pilot.press(*str(model), "enter")
            table = picker.query_one("DataTable")
            await wait_for(pilot, lambda: table.row_count == 1)
            assert str(table.get_row_at(0)[0]) == "Elsewhere Tiny"

    asyncio.run(go())


def test_the_demo_model_in_use_is_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new user chats with the demo model (no engine.model set): F8 lists it as the model in use, instead
    of "No GGUF models found"."""
    from huggingface_hub import constants

    from rpchat.engine.demo import demo_model_file

    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    write_tiny_model(demo_model_file(), n_layer=1, name="Demo Tiny")  # where the demo model is assembled

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(150, 40)) as pilot:
            await wait_for(pilot, lambda: type(app.screen).__name__ == "LibraryScreen")
            await pilot.press("f8")
            await wait_for(pilot, lambda: isinstance(app.screen, ModelPicker))
            table = app.screen.query_one("DataTable")
            await wait_for(pilot, lambda: table.row_count == 1)
            row = rows(table)[0]
            assert (row[0], row[-1]) == ("* Demo Tiny", "in use (demo)")
            assert str(app.screen.query_one("#picker-note").render()).startswith("1 model at n_ctx")

    asyncio.run(go())
