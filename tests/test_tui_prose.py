"""Roleplay prose styling: kinds found, theme colors applied, untrusted text kept literal and inert."""

from __future__ import annotations

from rich.style import Style

from rpchat.paths import bundled_dir
from rpchat.tui.prose import clean, prose_spans, prose_text
from rpchat.tui.themes import load_theme_file, prose_styles

LINE = '*waves* "Hi there," she said. _I wonder_ \'\'The Book\'\' (OOC: brb) snake_case_name 2*3*4'


def test_each_prose_kind_is_found() -> None:
    assert prose_spans(LINE) == [
        ("action", "*waves*"),
        ("dialogue", '"Hi there,"'),
        ("thought", "_I wonder_"),
        ("title", "''The Book''"),
        ("ooc", "(OOC: brb)"),
    ]
    assert prose_spans("((out of character))\nOOC: later") == [
        ("ooc", "((out of character))"), ("ooc", "OOC: later"),
    ]
    assert prose_spans("\u201cCurly quotes\u201d") == [("dialogue", "\u201cCurly quotes\u201d")]


def test_snake_case_and_arithmetic_are_not_styled() -> None:
    assert prose_spans("snake_case_name and 2*3*4 and a * b") == []


def test_styles_come_from_theme_variables() -> None:
    theme = load_theme_file(bundled_dir("themes") / "rpchat-dark.yaml")
    styles = prose_styles(theme)
    text = prose_text('"Hi" *waves*', styles)
    by_text = {text.plain[s.start:s.end]: s.style for s in text.spans}
    dialogue = by_text['"Hi"']
    assert isinstance(dialogue, Style) and dialogue.color is not None
    assert dialogue.color.triplet.hex == theme.variables["prose-dialogue"].lower()
    action = by_text["*waves*"]
    assert isinstance(action, Style) and action.italic
    assert action.color.triplet.hex == theme.variables["prose-action"].lower()


def test_markup_stays_literal_and_controls_are_inert() -> None:
    raw = "[bold red]x[/] \x1b[2J\x1b]0;title\x07 \u202eevil \r\nnext"
    text = prose_text(raw, {"dialogue": Style(color="red")})
    assert "[bold red]x[/]" in text.plain
    assert "\x1b" not in text.plain and "\x07" not in text.plain and "\u202e" not in text.plain
    assert "\u241b[2J" in text.plain  # ESC shows as a visible symbol
    assert "\r" not in clean("a\r\nb") and clean("a\r\nb") == "a\nb"
    assert not [s for s in text.spans if "bold" in str(s.style)]
