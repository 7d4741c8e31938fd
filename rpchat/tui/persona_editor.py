"""Persona and scenario editor: pick, create, rename, delete and edit personas; set this chat's scenario.

Push ``PersonaEditor(book, persona=chat.persona, scenario=chat.scenario, card_scenario=card.scenario)``.
Persona changes are saved to the persona file at once; the screen dismisses with a `PersonaChoice`
(which persona this chat uses and its scenario override) or None when cancelled. The caller applies
it from the next turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Label, OptionList, Static, TextArea
from textual.widgets.option_list import Option

from rpchat.errors import RpchatError
from rpchat.personas import PersonaBook
from rpchat.text import strip_controls
from rpchat.tui.bindings import bindings_for
from rpchat.tui.dialogs import ConfirmDialog, TextPrompt


@dataclass(frozen=True)
class PersonaChoice:
    """What the editor decided for this chat. ``scenario`` None means "use the card's scenario"."""

    persona: str
    scenario: str | None


def kept_or_edited(original: str, shown: str) -> str:
    """The text to store for a field shown as ``strip_controls(original)`` and now reading ``shown``.

    An untouched field keeps its exact original text; an edited one stores what the user typed.
    """
    return original if shown == strip_controls(original) else shown


class PersonaEditor(ModalScreen["PersonaChoice | None"]):
    """Pick and edit personas, and this chat's scenario."""

    BINDINGS: ClassVar[list[BindingType]] = bindings_for("persona_editor")

    def __init__(self, book: PersonaBook | None = None, *, persona: str | None = None,
                 scenario: str | None = None, card_scenario: str = "") -> None:
        super().__init__()
        self.book = book if book is not None else PersonaBook.load()
        self._selected = self.book.resolve(persona).name
        self._scenario = scenario
        self._card_scenario = card_scenario
        self._shown_description = ""

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Persona and scenario", classes="title")
            with Horizontal(id="top"):
                with Vertical(id="persona-side"):
                    yield Label("Personas (★ default)", classes="section")
                    yield OptionList(id="personas")
                    with Horizontal(id="persona-buttons"):
                        yield Button("New", id="new", compact=True)
                        yield Button("Rename", id="rename", compact=True)
                        yield Button("Delete", id="delete", compact=True)
                        yield Button("★", id="default", compact=True, tooltip="Make default")
                with Vertical(id="persona-main"):
                    yield Label("", id="persona-name", classes="section", markup=False)
                    yield TextArea("", id="description", soft_wrap=True)
            yield Label("Scenario for this chat (overrides the card's; empty uses the card's)", classes="section")
            yield TextArea(strip_controls(self._scenario or ""), id="scenario", soft_wrap=True)
            card = strip_controls(self._card_scenario.strip()) or "(the card has no scenario)"
            yield Static(Text("Card's scenario: ", style="italic") + Text(card), id="card-scenario")
            with Horizontal(id="buttons"):
                yield Button("Cancel", id="cancel", compact=True)
                yield Button("Apply", id="apply", variant="primary", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self._refresh_list()
        self._show(self._selected)
        self.query_one("#personas", OptionList).focus()

    # --- persona list --------------------------------------------------------------------------------
    def _refresh_list(self) -> None:
        options = self.query_one("#personas", OptionList)
        options.clear_options()
        for p in self.book.personas:
            mark = "★ " if p.name == self.book.default else "  "
            options.add_option(Option(Text(mark + strip_controls(p.name)), id=p.name))
        index = self.book.names.index(self._selected) if self._selected in self.book.names else 0
        options.highlighted = index

    def _show(self, name: str) -> None:
        persona = self.book.resolve(name)
        self._selected = persona.name
        self._shown_description = strip_controls(persona.description)
        self.query_one("#persona-name", Label).update(f"Description of {persona.name}")
        self.query_one("#description", TextArea).text = self._shown_description

    def _store_description(self) -> None:
        """Write the description being edited back to the book (and the file) if it changed."""
        shown = self.query_one("#description", TextArea).text
        if shown == self._shown_description or self._selected not in self.book.names:
            return
        original = self.book.get(self._selected).description
        self._run(lambda: self.book.edit(self._selected, kept_or_edited(original, shown)))
        self._shown_description = shown

    @on(OptionList.OptionHighlighted, "#personas")
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        name = event.option.id
        if name and name != self._selected:
            self._store_description()
            self._show(name)

    def _run(self, change: object) -> bool:
        """Apply one change to the book and save it; a problem becomes a notification."""
        try:
            change()  # type: ignore[operator]
            self.book.save()
        except (RpchatError, OSError) as e:
            self.notify(strip_controls(str(e)), title="Persona not saved", severity="error")
            return False
        return True

    @on(Button.Pressed, "#new")
    def action_new_persona(self) -> None:
        """Ask for a name and add a persona."""
        def created(name: str | None) -> None:
            if name and self._run(lambda: self.book.add(name)):
                self._selected = name.strip()
                self._refresh_list()
                self._show(self._selected)
                self.query_one("#description", TextArea).focus()

        self._store_description()
        self.app.push_screen(TextPrompt("New persona", placeholder="the name you play as"), created)

    @on(Button.Pressed, "#rename")
    def _rename(self) -> None:
        old = self._selected

        def renamed(name: str | None) -> None:
            if name and name.strip() != old and self._run(lambda: self.book.rename(old, name)):
                self._selected = name.strip()
                self._refresh_list()
                self._show(self._selected)

        self._store_description()
        self.app.push_screen(TextPrompt(f"Rename {old}", old), renamed)

    @on(Button.Pressed, "#delete")
    def _delete(self) -> None:
        name = self._selected

        def confirmed(yes: bool | None) -> None:
            if yes and self._run(lambda: self.book.delete(name)):
                self._selected = self.book.default
                self._refresh_list()
                self._show(self._selected)

        self.app.push_screen(ConfirmDialog(f"Delete the persona {name}?", yes="Delete", danger=True), confirmed)

    @on(Button.Pressed, "#default")
    def _make_default(self) -> None:
        if self._run(lambda: self.book.set_default(self._selected)):
            self._refresh_list()

    # --- result --------------------------------------------------------------------------------------
    def result(self) -> PersonaChoice:
        """The choice the form shows now."""
        shown = self.query_one("#scenario", TextArea).text
        scenario = kept_or_edited(self._scenario or "", shown)
        return PersonaChoice(self._selected, scenario if scenario.strip() else None)

    @on(Button.Pressed, "#apply")
    def action_apply(self) -> None:
        """Save the description being edited and return the choice."""
        self._store_description()
        self.dismiss(self.result())

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        """Close without changing this chat (persona file edits already made stay saved)."""
        self.dismiss(None)
