"""The story-so-far dialog: view and edit the summary of what fell out of the context, pin it, or turn it off.

Push ``StorySummaryDialog(session.chat.summary, note)``; it dismisses with the edited `StorySummary`, or
None on Esc. The text is stored as SillyTavern's Summarize extension stores it (``extra.memory``).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Checkbox, Static, TextArea

from rpchat.chat.model import StorySummary
from rpchat.text import strip_controls
from rpchat.tui.bindings import bindings_for
from rpchat.tui.dialogs import Dialog
from rpchat.tui.persona_editor import kept_or_edited


class StorySummaryDialog(Dialog[StorySummary | None]):
    """Edit this chat's story-so-far summary."""

    BINDINGS: ClassVar[list[BindingType]] = bindings_for("summary")

    def __init__(self, summary: StorySummary, status: str) -> None:
        super().__init__()
        self._summary = summary
        self._status = status

    def compose(self) -> ComposeResult:
        summary = self._summary
        with Vertical():
            yield Static("Story so far", classes="dialog-title", markup=False)
            yield Static(self._status, id="summary-status", classes="summary-help", markup=False)
            yield TextArea(strip_controls(summary.text), id="summary-text", soft_wrap=True)
            with Horizontal(classes="summary-row"):
                yield Checkbox("Pinned (never rewritten)", summary.pinned, id="summary-pinned")
                yield Checkbox("On", summary.enabled, id="summary-on")
            yield Static("The model rewrites this when turns fall out of the context, unless it is pinned. "
                         "Off: no summary in this chat's prompts.", classes="summary-help", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Save", id="save", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#summary-text", TextArea).focus()

    @on(Button.Pressed, "#save")
    def action_save(self) -> None:
        """Dismiss with the edited summary."""
        self.dismiss(dataclasses.replace(
            self._summary,
            text=kept_or_edited(self._summary.text, self.query_one("#summary-text", TextArea).text),
            pinned=self.query_one("#summary-pinned", Checkbox).value,
            enabled=self.query_one("#summary-on", Checkbox).value,
        ))

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
