"""The help screen: every key binding, as remapped by the user's config, grouped by where it works."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from rpchat.tui.bindings import KEYS, effective_key

SCOPE_TITLES = {
    "app": "Everywhere",
    "library": "Character library",
    "chat": "Chat",
    "transcript": "Message cursor (ctrl+up)",
}
INPUT_KEYS = (
    ("enter", "Send (an empty Enter asks for a reply)"),
    ("shift+enter, ctrl+j", "New line"),
    ("up (input empty)", "Edit your last message"),
    ("left / right (input empty)", "Swipe the last reply"),
    ("ctrl+p", "Command palette: every action, themes"),
)


def help_table(keymap: dict[str, str]) -> Table:
    """All bindings as a Rich table (remapped keys shown as the user set them)."""
    table = Table(show_header=True, header_style="bold", expand=True, box=None, padding=(0, 2))
    # Ratios, not content, size the columns: a long section title must not squeeze the actions.
    table.add_column("Key", ratio=3)
    table.add_column("Action", ratio=4)
    table.add_column("Id", style="dim", ratio=3, no_wrap=True)
    for scope, title in SCOPE_TITLES.items():
        table.add_section()
        table.add_row(Text(title, style="bold underline", no_wrap=True, overflow="ellipsis"), "", "")
        for spec in KEYS:
            if spec.scope == scope:
                table.add_row(Text(effective_key(spec, keymap)), Text(spec.description), Text(spec.id))
        if scope == "chat":
            for key, what in INPUT_KEYS:
                table.add_row(Text(key), Text(what), "")
        table.add_row("", "", "")
    return table


class HelpScreen(ModalScreen[None]):
    """Lists every key; Esc or F1 closes it."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical { width: 90; max-width: 95%; height: 90%; border: thick $primary 60%;
                            background: $surface; padding: 0 1; }
    HelpScreen #help-title { text-style: bold; color: $primary; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,f1,q", "dismiss", "Close", id="help.close"),
    ]

    def compose(self) -> ComposeResult:
        keymap = getattr(self.app, "keymap", {})
        with Vertical():
            yield Static("Keys (remap them in config.yaml under `keys:`, by id)", id="help-title", markup=False)
            with VerticalScroll():
                yield Static(help_table(keymap))
