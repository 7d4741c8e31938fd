"""The author's note dialog: this chat's note text, where it goes, how deep and how often.

Push ``AuthorsNoteDialog(session.chat.note)``; it dismisses with the edited `AuthorsNote`, or None on
Esc. The note is stored in SillyTavern's ``note_*`` chat metadata, so it travels with the chat file.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Label, Select, Static, TextArea

from rpchat.chat.model import NOTE_POSITIONS, ROLES, AuthorsNote
from rpchat.text import strip_controls
from rpchat.tui.bindings import bindings_for
from rpchat.tui.dialogs import Dialog
from rpchat.tui.persona_editor import kept_or_edited

_POSITION_LABELS = {
    "in_chat": "In the chat, at the depth",
    "before_instruction": "Top of the instruction (re-reads the whole chat)",
    "after_instruction": "End of the instruction (re-reads the whole chat)",
}
_ROLE_LABELS = {"system": "Nobody (like narration)", "user": "The user", "assistant": "The character"}


class AuthorsNoteDialog(Dialog[AuthorsNote | None]):
    """Edit this chat's author's note."""

    BINDINGS: ClassVar[list[BindingType]] = bindings_for("note")

    def __init__(self, note: AuthorsNote) -> None:
        super().__init__()
        self._note = note

    def compose(self) -> ComposeResult:
        note = self._note
        with Vertical():
            yield Static("Author's note", classes="dialog-title", markup=False)
            yield TextArea(strip_controls(note.text), id="note-text", soft_wrap=True)
            with Horizontal(classes="note-row"):
                yield Label("Depth")
                yield Input(str(note.depth), id="note-depth", type="integer")
                yield Label("Every N turns")
                yield Input(str(note.interval), id="note-interval", type="integer")
            with Horizontal(classes="note-row"):
                yield Label("Position")
                yield Select([(_POSITION_LABELS[p], p) for p in NOTE_POSITIONS], value=note.position,
                             allow_blank=False, id="note-position")
            with Horizontal(classes="note-row"):
                yield Label("Spoken by")
                yield Select([(_ROLE_LABELS[r], r) for r in ROLES], value=note.role, allow_blank=False,
                             id="note-role")
            yield Static("Depth: messages from the end of the chat (0: just before the reply). Every N turns: "
                         "1 always, 0 never, N every Nth message of yours. {{char}} and {{user}} work.",
                         classes="note-help", markup=False)
            yield Static("", id="error", classes="dialog-error", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Save", id="save", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#note-text", TextArea).focus()

    def _number(self, widget_id: str, what: str, high: int) -> int | None:
        value = self.query_one(widget_id, Input).value.strip()
        if not value.isdigit() or int(value) > high:
            self.query_one("#error", Static).update(f"{what} must be a whole number from 0 to {high}.")
            return None
        return int(value)

    @on(Button.Pressed, "#save")
    def action_save(self) -> None:
        """Check the numbers and dismiss with the edited note."""
        depth = self._number("#note-depth", "Depth", 1000)
        interval = self._number("#note-interval", "Every N turns", 1_000_000) if depth is not None else None
        if depth is None or interval is None:
            return
        position = self.query_one("#note-position", Select).value
        role = self.query_one("#note-role", Select).value
        self.dismiss(dataclasses.replace(
            self._note,
            text=kept_or_edited(self._note.text, self.query_one("#note-text", TextArea).text),
            depth=depth,
            interval=interval,
            position=position if isinstance(position, str) else self._note.position,
            role=role if isinstance(role, str) else self._note.role,
        ))

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
