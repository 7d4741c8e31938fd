"""Themes: bundled YAML files, user themes, one notice for bad files, fallback, remembering the choice."""

from __future__ import annotations

import asyncio
from pathlib import Path

from textual.app import App, ComposeResult
from textual.color import Color
from textual.widgets import Static

from rpchat.config import load_config
from rpchat.paths import bundled_dir, profile
from rpchat.tui.themes import (
    DEFAULT_THEME,
    LAST_RESORT_THEME,
    PROSE_KINDS,
    install_themes,
    load_themes,
    pick_theme,
    prose_styles,
    prose_variable_defaults,
    remember_theme,
)


def user_theme(name: str, text: str) -> Path:
    folder = profile().user_themes_dir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


class ThemedApp(App[None]):
    CSS = "#probe { color: $prose-dialogue; }"

    def __init__(self, wanted: str | None = None) -> None:
        super().__init__()
        self.wanted = wanted
        self.notice: str | None = None

    def get_theme_variable_defaults(self) -> dict[str, str]:
        return prose_variable_defaults()

    def compose(self) -> ComposeResult:
        yield Static("probe", id="probe")

    def on_mount(self) -> None:
        self.notice = install_themes(self, self.wanted)


def test_bundled_themes_are_at_least_four_dark_and_light_with_prose_colors() -> None:
    files = sorted(bundled_dir("themes").glob("*.yaml"))
    themes, notice = load_themes()
    assert notice is None
    assert len(files) >= 4 and len(themes) == len(files)
    assert {t.dark for t in themes} == {True, False}
    assert DEFAULT_THEME in {t.name for t in themes}
    for theme in themes:
        for kind in PROSE_KINDS:
            Color.parse(theme.variables[f"prose-{kind}"])  # every prose color is a real color
        styles = prose_styles(theme)
        assert styles["action"].italic and styles["title"].bold and styles["dialogue"].color is not None


def test_bad_theme_files_give_one_notice_and_the_good_ones_still_load() -> None:
    user_theme("broken.yaml", "name: broken\nprimary: [unclosed\n")
    user_theme("badcolor.yaml", "name: badcolor\nprimary: notacolor\n")
    user_theme("list.yaml", "- just\n- a list\n")
    # Values Textual's widgets use would crash the app later; they are refused up front.
    user_theme("badvar.yaml", "name: badvar\nprimary: '#336699'\nvariables:\n  footer-key-foreground: notacolor\n")
    user_theme("badcss.yaml", "name: badcss\nprimary: '#336699'\nvariables:\n  my-thing: '}}'\n")
    user_theme("mine.yaml", "name: mine\nprimary: '#336699'\ndark: false\nvariables:\n  prose-ooc: '#999999'\n"
               "  footer-key-foreground: '#ff0000 50%'\n  block-cursor-text-style: bold italic\n")
    themes, notice = load_themes()
    names = {t.name for t in themes}
    assert "mine" in names and "broken" not in names and "badcolor" not in names
    assert notice is not None and "\n" not in notice
    assert "broken.yaml" in notice and "badcolor.yaml" in notice and "list.yaml" in notice
    assert "notacolor" in notice and "badvar.yaml" in notice and "badcss.yaml" in notice
    assert "badvar" not in names and "badcss" not in names
    mine = next(t for t in themes if t.name == "mine")
    assert mine.variables["prose-ooc"] == "#999999"
    assert mine.variables["prose-dialogue"] == prose_variable_defaults(dark=False)["prose-dialogue"]


def test_user_theme_overrides_a_bundled_one_of_the_same_name() -> None:
    user_theme("rpchat-dark.yaml", "name: rpchat-dark\nprimary: '#123456'\n")
    themes, notice = load_themes()
    assert notice is None
    assert next(t for t in themes if t.name == "rpchat-dark").primary == "#123456"


def test_pick_theme_falls_back_to_default_then_textual() -> None:
    assert pick_theme("rpchat-nord", ["rpchat-nord", DEFAULT_THEME]) == "rpchat-nord"
    assert pick_theme("gone", ["rpchat-nord", DEFAULT_THEME]) == DEFAULT_THEME
    assert pick_theme("gone", []) == LAST_RESORT_THEME


def test_install_switches_theme_and_prose_variable_reaches_css() -> None:
    asyncio.run(_switch_theme())


async def _switch_theme() -> None:
    app = ThemedApp("rpchat-light")
    async with app.run_test() as pilot:
        await pilot.pause()
        assert app.notice is None
        assert app.theme == "rpchat-light"
        light = app.get_theme("rpchat-light")
        assert light is not None
        probe = app.query_one("#probe", Static)
        assert probe.styles.color == Color.parse(light.variables["prose-dialogue"])
        app.theme = "rpchat-dark"
        await pilot.pause()
        dark = app.get_theme("rpchat-dark")
        assert dark is not None
        assert probe.styles.color == Color.parse(dark.variables["prose-dialogue"])


def test_missing_wanted_theme_and_bad_file_fall_back_with_one_notice() -> None:
    user_theme("oops.yaml", "name: oops\n")  # no primary color
    asyncio.run(_fallback())


async def _fallback() -> None:
    app = ThemedApp("no-such-theme")
    async with app.run_test() as pilot:
        await pilot.pause()
        assert app.theme == DEFAULT_THEME
        assert app.notice is not None and "oops.yaml" in app.notice and "no-such-theme" in app.notice


def test_remember_theme_saves_the_choice_in_config() -> None:
    remember_theme("rpchat-parchment")
    assert load_config(profile()).theme == "rpchat-parchment"
    assert "theme: rpchat-parchment" in profile().config_file.read_text(encoding="utf-8")


def test_user_theme_overriding_textual_variables_applies_without_error() -> None:
    user_theme("mine.yaml", "name: mine\nprimary: '#336699'\nvariables:\n  footer-key-foreground: '#ff0000 50%'\n"
               "  block-cursor-text-style: bold italic\n  prose-dialogue: '#00ff00'\n")

    async def run() -> None:
        app = ThemedApp("mine")
        async with app.run_test() as pilot:
            await pilot.pause()
            assert app.notice is None and app.theme == "mine"
            assert app.query_one("#probe", Static).styles.color == Color.parse("#00ff00")

    asyncio.run(run())
