"""Pilot tests of the settings screen: validation, the model picker, saving to config.yaml, a snapshot."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.app import App
from textual.widgets import DataTable, Input, Select, Static, TabbedContent

from rpchat.config import Config, EngineConfig, load_config, save_config
from rpchat.engine.presets import load_preset
from rpchat.paths import profile
from rpchat.tui.settings import SettingsScreen
from rpchat.tui.themes import STYLESHEET, install_themes, prose_variable_defaults


class Host(App[None]):
    CSS_PATH = STYLESHEET  # the app's sheet, which styles every screen

    def __init__(self, make: Callable[[], SettingsScreen]) -> None:
        super().__init__()
        self.make = make
        self.results: list[Any] = []

    def get_theme_variable_defaults(self) -> dict[str, str]:
        return prose_variable_defaults()

    def on_mount(self) -> None:
        install_themes(self, "rpchat-dark")
        self.push_screen(self.make(), self.results.append)


def drive(make: Callable[[], SettingsScreen], script: Callable[[Host, Any], Any]) -> Host:
    app = Host(make)

    async def run() -> None:
        async with app.run_test(size=(110, 36)) as pilot:
            await pilot.pause()
            await app.workers.wait_for_complete()
            await pilot.pause()
            await script(app, pilot)
            await pilot.pause()

    asyncio.run(run())
    return app


def problems(app: Host) -> str:
    return str(app.screen.query_one("#problems", Static).render())


def test_bad_numbers_are_listed_and_nothing_is_saved() -> None:
    async def script(app: Host, pilot: Any) -> None:
        screen = app.screen
        screen.query_one("#n-ctx", Input).value = "4000"
        screen.query_one("#n-threads", Input).value = "two"
        screen.query_one("#n-batch", Input).value = "0"
        screen.query_one("#default-length", Select).value = ""
        screen.query_one("#max-new-tokens", Input).value = ""
        await pilot.press("ctrl+s")
        await pilot.pause()
        text = problems(app)
        assert "Context (n_ctx): must be a multiple of 256 (e.g. 3,840)" in text
        assert "CPU threads: 'two' is not a whole number" in text
        assert "Batch size: must be between 1 and 65,536 (got 0)" in text
        assert "Reply budget: enter a number" in text
        assert app.results == []
        await pilot.press("escape")

    app = drive(lambda: SettingsScreen(Config()), script)
    assert app.results == [None]
    assert not profile().config_file.exists()


def test_remote_engine_needs_a_url_and_a_missing_lora_is_refused() -> None:
    async def script(app: Host, pilot: Any) -> None:
        screen = app.screen
        screen.query_one("#kind", Select).value = "remote"
        screen.query_one("#lora", Input).value = "/nowhere/adapter.gguf"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "Server URL: needed for a remote engine" in problems(app)
        assert "LoRA adapter: /nowhere/adapter.gguf does not exist" in problems(app)
        screen.query_one("#lora", Input).value = ""
        screen.query_one("#remote-url", Input).value = "http://127.0.0.1:8080"
        screen.query_one("#remote-api", Select).value = "openai"
        screen.query_one("#api-key", Input).value = "sk-test"
        screen.query_one("#default-length", Select).value = ""
        await pilot.press("ctrl+s")

    app = drive(lambda: SettingsScreen(Config()), script)
    saved = load_config(profile())
    assert app.results == [saved]
    assert saved.engine.kind == "remote" and saved.engine.remote_url == "http://127.0.0.1:8080"
    assert saved.engine.remote_api == "openai" and saved.engine.api_key == "sk-test"
    assert saved.default_length is None  # "none": the model decides the length


def test_pick_model_from_folder_and_save_everything(tiny_model: Path, tmp_path: Path) -> None:
    models = tmp_path / "my models"
    models.mkdir()
    shutil.copy(tiny_model, models / "tiny.gguf")
    lora = models / "style-lora.gguf"
    lora.write_bytes(b"GGUF")  # the picker skips unreadable files' errors; LoRA only needs to exist
    start = Config(engine=EngineConfig(models_dir=str(models)), default_length="long",
                   keys={"regenerate": "ctrl+r"})

    async def script(app: Host, pilot: Any) -> None:
        screen = app.screen
        table = screen.query_one("#models", DataTable)
        assert table.row_count == 2  # the tiny model and the unreadable "lora"
        cells = [str(c) for c in table.get_row_at(1)]
        assert cells[0] == "tiny-llama" and cells[1] == "llama" and cells[6] == "tiny.gguf"
        assert "unreadable" in str(table.get_row_at(0)[0])
        table.focus()
        table.move_cursor(row=1)
        await pilot.press("enter")
        assert screen.query_one("#model", Input).value == str(models / "tiny.gguf")
        screen.query_one("#lora", Input).value = str(lora)
        screen.query_one("#n-ctx", Input).value = "8192"
        screen.query_one("#n-gpu-layers", Input).value = "0"
        screen.query_one("#n-threads", Input).value = "2"
        screen.query_one("#kv-type", Select).value = "q8_0"
        assert screen.query_one("#flash-attn", Select).value == "auto"
        screen.query_one("#flash-attn", Select).value = "off"  # forced off: no longer the same as auto
        screen.query_one("#max-new-tokens", Input).value = "250"
        screen.query_one("#tabs", TabbedContent).active = "tab-prompt"
        await pilot.pause()
        screen.query_one("#format", Select).value = "limamono"
        await pilot.pause()
        length = screen.query_one("#default-length", Select)
        assert length.value == "long"  # limamono has "long" too, so the pick stays
        length.value = "huge"
        preset = screen.query_one("#preset", Select)
        options = [value for _, value in preset._options if isinstance(value, str)]
        other = next(name for name in options if name != "ashhlimarp")
        preset.value = other
        await pilot.pause()
        shown = load_preset(other)
        # The sampler rows follow the picked preset.
        assert screen.query_one("#s-temperature", Input).value == repr(shown.sampling.temperature)
        assert screen.query_one("#s-repeat_last_n", Input).value == str(shown.sampling.repeat_last_n)
        screen.query_one("#theme", Select).value = "rpchat-nord"
        await pilot.pause()
        assert app.theme == "rpchat-nord"  # previewed at once
        await pilot.click("#save")

    app = drive(lambda: SettingsScreen(start), script)
    saved = load_config(profile())
    assert app.results == [saved]
    assert saved.engine.model == str(models / "tiny.gguf") and saved.engine.lora == str(lora)
    assert saved.engine.models_dir == str(models)
    assert (saved.engine.n_ctx, saved.engine.n_gpu_layers, saved.engine.n_threads) == (8192, 0, 2)
    assert saved.engine.kv_type == "q8_0" and saved.engine.flash_attn == "off"
    assert saved.max_new_tokens == 250 and saved.preset != "ashhlimarp" and saved.theme == "rpchat-nord"
    assert saved.format == "limamono" and saved.default_length == "huge"
    assert saved.keys == {"regenerate": "ctrl+r"}  # fields the screen does not show are kept
    assert "n_ctx: 8192" in profile().config_file.read_text(encoding="utf-8")


def test_cancel_restores_the_previewed_theme() -> None:
    save_config(profile(), Config(theme="rpchat-dark"))

    async def script(app: Host, pilot: Any) -> None:
        app.screen.query_one("#theme", Select).value = "rpchat-light"
        await pilot.pause()
        assert app.theme == "rpchat-light"
        await pilot.press("escape")
        await pilot.pause()
        assert app.theme == "rpchat-dark"

    app = drive(lambda: SettingsScreen(load_config(profile())), script)
    assert app.results == [None]
    assert load_config(profile()).theme == "rpchat-dark"


def test_settings_screen_snapshot(snap_compare: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A relative models folder keeps temp paths out of the picture.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    config = Config(engine=EngineConfig(models_dir="models", n_threads=4))

    async def scanned(pilot: Any) -> None:
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()

    assert snap_compare(Host(lambda: SettingsScreen(config)), terminal_size=(100, 30), run_before=scanned)


def test_edited_sampler_values_are_checked_and_saved_as_the_users_preset() -> None:
    async def script(app: Host, pilot: Any) -> None:
        screen = app.screen
        temperature = screen.query_one("#s-temperature", Input)
        assert temperature.value == "0.7"  # ashhlimarp, from seed 003
        temperature.value = "warm"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "Sampler temperature: 'warm' is not a number" in problems(app)
        temperature.value = "11"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "Sampler temperature = 11.0 is outside 0..10" in problems(app)
        assert app.results == []
        temperature.value = "0.9"
        screen.query_one("#s-seed", Input).value = "42"
        screen.query_one("#s-dry_sequence_breakers", Input).value = '["\\n", "*"]'
        await pilot.press("ctrl+s")

    app = drive(lambda: SettingsScreen(Config(preset="ashhlimarp")), script)
    assert isinstance(app.results[0], Config)
    mine = load_preset("ashhlimarp", profile().user_presets_dir)
    assert (profile().user_presets_dir / "ashhlimarp.yaml").exists()
    assert mine.sampling.temperature == 0.9 and mine.sampling.seed == 42
    assert mine.sampling.dry_sequence_breakers == ("\n", "*")
    assert mine.sampling.tfs_z == 0.9 and mine.sampling.repeat_penalty == 1.11  # the rest kept


def test_unchanged_sampler_values_write_no_preset_file() -> None:
    async def script(app: Host, pilot: Any) -> None:
        await pilot.press("ctrl+s")

    app = drive(lambda: SettingsScreen(Config()), script)
    assert isinstance(app.results[0], Config)
    assert not profile().user_presets_dir.exists() or not any(profile().user_presets_dir.iterdir())
