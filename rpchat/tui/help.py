"""The help screen: every key binding, as remapped by the user's config, grouped by where it works."""

from __future__ import annotations

from typing import ClassVar

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from rpchat.tui.bindings import KEYS, SCOPE_TITLES, bindings_for, effective_key
from rpchat.tui.commands import palette_only
from rpchat.tui.host import host_of

INPUT_KEYS = (
    ("enter", "Send (an empty Enter asks for a reply)"),
    ("shift+enter, ctrl+j", "New line"),
    ("up (input empty)", "Edit your last message"),
    ("left / right (input empty)", "Swipe the last reply"),
    ("ctrl+p", "Command palette: every action, themes"),
)
EDIT_KEYS = (("shift+enter, ctrl+j", "New line"),)


def _section(title: str, rows: list[tuple[str, str, str]], *, header: bool) -> Group:
    """A heading on a line of its own (never squeezed into a column), then its keys."""
    table = Table(show_header=header, header_style="bold", expand=True, box=None, padding=(0, 2))
    # Ratios, not content, size the columns, so every section's columns line up; a section without
    # ids gives their room to the actions.
    with_ids = any(binding_id for _key, _what, binding_id in rows)
    table.add_column("Key", ratio=3)
    table.add_column("Action", ratio=4 if with_ids else 7)
    if with_ids:
        table.add_column("Id", style="dim", ratio=3, no_wrap=True, overflow="ellipsis")
    for key, what, binding_id in rows:
        table.add_row(Text(key), Text(what), *([Text(binding_id)] if with_ids else []))
    return Group(Text(title, style="bold underline"), table, Text(""))


def help_table(keymap: dict[str, str]) -> Group:
    """All bindings, one section per place they work (remapped keys shown as the user set them)."""
    sections: list[Group] = []
    for scope, title in SCOPE_TITLES.items():
        rows = [(effective_key(spec, keymap), spec.description, spec.id) for spec in KEYS if spec.scope == scope]
        if scope == "chat":
            rows += [(key, what, "") for key, what in INPUT_KEYS]
        elif scope == "edit":
            rows += [(key, what, "") for key, what in EDIT_KEYS]
        sections.append(_section(title, rows, header=not sections))
    palette = [(title, f"{SCOPE_TITLES.get(scope, scope)}: {help_text}", "") for scope, title, help_text in palette_only()]
    sections.append(_section("Only in the command palette (ctrl+p, then type the name)", palette, header=False))
    return Group(*sections)


class HelpScreen(ModalScreen[None]):
    """Lists every key; Esc or F1 closes it."""

    BINDINGS: ClassVar[list[BindingType]] = bindings_for("help")

    def compose(self) -> ComposeResult:
        keymap = host_of(self).keymap
        with Vertical():
            yield Static("Keys (remap them in config.yaml under `keys:`, by id). Esc or F1 closes.", id="help-title",
                         markup=False)
            with VerticalScroll():
                yield Static(help_table(keymap))
