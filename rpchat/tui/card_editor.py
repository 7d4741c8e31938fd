"""The card editor: every V2/V3 field, alternate greetings included, saved back to the card file.

Push ``CardEditor(card, path)``; it dismisses with a `SavedCard` after saving, or None. A PNG card is
rewritten with both the ``chara`` (V2) and ``ccv3`` (V3) chunks; a JSON or CharX card keeps its format
so nothing in it is lost; a new card or a bundled one is saved as a PNG in the user's cards folder.
Card text is shown as data: markup stays literal and control characters show as symbols.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Horizontal, HorizontalGroup, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Label, OptionList, Static, TabbedContent, TabPane, TextArea
from textual.widgets.option_list import Option

from rpchat.cards.avatar import read_image
from rpchat.cards.cardfile import load_card
from rpchat.cards.library import is_bundled
from rpchat.cards.model import Card
from rpchat.chat.library import save_edited_card
from rpchat.errors import RpchatError
from rpchat.text import strip_controls
from rpchat.tui.avatar import AvatarView
from rpchat.tui.bindings import bindings_for
from rpchat.tui.dialogs import ConfirmDialog, PathPrompt
from rpchat.tui.persona_editor import kept_or_edited

# The tabs after "Basics": (field, label, kind) where kind is "text", "json" or "greetings".
TABS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "Description": (("description", "Description", "text"), ("personality", "Personality", "text"),
                    ("scenario", "Scenario", "text")),
    "Greetings": (("first_mes", "First message", "text"),
                  ("alternate_greetings", "Alternate greetings (swipes of the first message)", "greetings")),
    "Examples": (("mes_example", "Example messages (<START> separates dialogues)", "text"),),
    "Prompts": (("system_prompt", "System prompt ({{original}} keeps the default)", "text"),
                ("post_history_instructions", "Post-history instructions (jailbreak)", "text")),
    "Notes": (("creator_notes", "Creator notes", "text"),
              ("creator_notes_multilingual", "Creator notes by language (JSON: {\"en\": \"...\"})", "json")),
    "Lorebook": (("character_book", "Lorebook (character_book, JSON)", "json"),),
    "Advanced": (("group_only_greetings", "Group-only greetings (V3)", "greetings"),
                 ("extensions", "Extensions (JSON)", "json")),
}
LINE_FIELDS = (("name", "Name"), ("nickname", "Nickname (V3)"), ("creator", "Creator"),
               ("character_version", "Version"))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")


@dataclass(frozen=True)
class SavedCard:
    """A card the editor wrote, and the file it went to (a renamed card's new file; its chats moved along)."""

    card: Card
    path: Path
    # The file the card was opened from, when the save renamed it.
    renamed_from: Path | None = None


def _wid(field: str) -> str:
    return "f-" + field.replace("_", "-")


class GreetingList(Vertical):
    """Edit a list of greetings: pick one on the left, edit it on the right, add or remove."""

    DEFAULT_CSS = """
    GreetingList { height: 1fr; }
    GreetingList > Horizontal { height: 1fr; }
    GreetingList OptionList { width: 30; height: 1fr; }
    GreetingList TextArea { width: 1fr; height: 1fr; }
    GreetingList .greeting-buttons { height: auto; }
    GreetingList .greeting-buttons Button { margin-right: 1; }
    """

    def __init__(self, greetings: list[str], *, id: str | None = None) -> None:
        super().__init__(id=id)
        # (original text or None for a new greeting, text as shown/edited)
        self._items: list[tuple[str | None, str]] = [(g, strip_controls(g)) for g in greetings]
        self._current: int | None = None

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield OptionList()
            yield TextArea("", soft_wrap=True, disabled=not self._items)
        with HorizontalGroup(classes="greeting-buttons"):
            yield Button("Add", classes="add", compact=True)
            yield Button("Remove", classes="remove", compact=True)

    def on_mount(self) -> None:
        self._refresh(0 if self._items else None)

    @property
    def greetings(self) -> list[str]:
        """The greetings as edited (untouched ones keep their exact original text)."""
        self._keep_edit()
        return [kept_or_edited(orig, shown) if orig is not None else shown for orig, shown in self._items]

    def _keep_edit(self) -> None:
        if self._current is not None and self._current < len(self._items):
            orig, _ = self._items[self._current]
            self._items[self._current] = (orig, self.query_one(TextArea).text)

    def _refresh(self, select: int | None) -> None:
        options = self.query_one(OptionList)
        options.clear_options()
        for i, (_, shown) in enumerate(self._items):
            first = shown.strip().split("\n", 1)[0] or "(empty)"
            options.add_option(Option(Text(f"{i + 1}. {first}", no_wrap=True, overflow="ellipsis")))
        area = self.query_one(TextArea)
        self._current = select
        area.disabled = select is None
        area.text = self._items[select][1] if select is not None else ""
        if select is not None:
            options.highlighted = select

    @on(OptionList.OptionHighlighted)
    def _picked(self, event: OptionList.OptionHighlighted) -> None:
        event.stop()
        if event.option_index != self._current:
            self._keep_edit()
            self._current = event.option_index
            self.query_one(TextArea).text = self._items[event.option_index][1]

    @on(Button.Pressed, ".add")
    def add_greeting(self, event: Button.Pressed | None = None) -> None:
        """Append an empty greeting and start editing it."""
        self._keep_edit()
        self._items.append((None, ""))
        self._refresh(len(self._items) - 1)
        self.query_one(TextArea).focus()

    @on(Button.Pressed, ".remove")
    def remove_greeting(self, event: Button.Pressed | None = None) -> None:
        """Remove the greeting being edited."""
        if self._current is None:
            return
        self._keep_edit()
        del self._items[self._current]
        self._refresh(min(self._current, len(self._items) - 1) if self._items else None)


class CardEditor(Screen["SavedCard | None"]):
    """Edit all fields of a card and save it."""

    BINDINGS: ClassVar[list[BindingType]] = bindings_for("card_editor")

    # Typing should go into the name at once, not into the tab strip.
    AUTO_FOCUS = "#f-name"

    def __init__(self, card: Card, path: Path | None = None) -> None:
        super().__init__()
        self.card, self.path = card, path
        self._avatar = card.avatar

    # --- layout ----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        card = self.card
        title = f"Edit card: {card.name}" + (f"  ({self.path.name}, {card.spec})" if self.path else "  (new)")
        if self.path is not None and is_bundled(self.path):
            title += "  - a bundled card: Save makes your own copy"
        yield Static(strip_controls(title), id="editor-title", markup=False)
        with TabbedContent(id="tabs"):
            with TabPane("Basics", id="tab-basics"), Horizontal(id="basics"):
                with VerticalScroll(id="basics-fields"):
                    for field, label in LINE_FIELDS:
                        yield self._line(field, label, getattr(card, field))
                    yield self._line("tags", "Tags", ", ".join(card.tags), "comma-separated")
                    yield Label("Sources (V3, one per line)", classes="area-label")
                    yield TextArea(strip_controls("\n".join(card.source)), id=_wid("source"), soft_wrap=True)
                with Vertical(id="avatar-side"):
                    yield AvatarView(card.avatar, id="avatar")
                    yield Button("Change picture", id="change-avatar", compact=True)
            for tab, fields in TABS.items():
                with TabPane(tab, id=f"tab-{tab.lower()}"):
                    for field, label, kind in fields:
                        yield Label(label, classes="area-label")
                        value = getattr(card, field)
                        if kind == "greetings":
                            yield GreetingList(value, id=_wid(field))
                        elif kind == "json":
                            text = json.dumps(value, indent=2, ensure_ascii=False) if value else ""
                            yield TextArea(strip_controls(text), id=_wid(field), soft_wrap=True)
                        else:
                            yield TextArea(strip_controls(value), id=_wid(field), soft_wrap=True)
        yield Static("", id="problems", markup=False)
        with Horizontal(id="buttons"):
            yield Button("Close", id="cancel", compact=True)
            yield Button("Save", id="save", variant="primary", compact=True)
        yield Footer()

    @staticmethod
    def _line(field: str, label: str, value: str, placeholder: str = "") -> HorizontalGroup:
        box = Input(strip_controls(value), placeholder=placeholder, id=_wid(field), compact=True)
        return HorizontalGroup(Label(label, classes="field-label"), box, classes="field")

    # --- reading the form ------------------------------------------------------------------------------
    def read_form(self) -> tuple[Card, list[str]]:
        """The card the form describes, and every problem found (empty when it can be saved)."""
        card, problems = self.card, []
        changes: dict[str, Any] = {}

        def text(field: str, widget: type[Input | TextArea]) -> str:
            node = self.query_one(f"#{_wid(field)}", widget)
            shown = node.value if isinstance(node, Input) else node.text
            original = getattr(card, field)
            return kept_or_edited(original, shown) if isinstance(original, str) else shown

        for field, _ in LINE_FIELDS:
            changes[field] = text(field, Input)
        if not changes["name"].strip():
            problems.append("Name: a card needs a name.")
        for fields in TABS.values():
            for field, label, kind in fields:
                if kind == "text":
                    changes[field] = text(field, TextArea)
                elif kind == "greetings":
                    changes[field] = self.query_one(f"#{_wid(field)}", GreetingList).greetings
                else:
                    changes[field] = self._json_field(field, label.split(" (")[0], problems)
        tags_shown = self.query_one(f"#{_wid('tags')}", Input).value
        if tags_shown == strip_controls(", ".join(card.tags)):
            changes["tags"] = list(card.tags)
        else:
            changes["tags"] = list(dict.fromkeys(t.strip() for t in tags_shown.split(",") if t.strip()))
        sources = self.query_one(f"#{_wid('source')}", TextArea).text
        if sources == strip_controls("\n".join(card.source)):
            changes["source"] = list(card.source)
        else:
            changes["source"] = [s.strip() for s in sources.splitlines() if s.strip()]
        changes["avatar"] = self._avatar
        return dataclasses.replace(card, **changes), problems

    def _json_field(self, field: str, label: str, problems: list[str]) -> Any:
        original = getattr(self.card, field)
        shown = self.query_one(f"#{_wid(field)}", TextArea).text
        if shown == strip_controls(json.dumps(original, indent=2, ensure_ascii=False) if original else ""):
            return original
        empty: Any = None if field == "character_book" else {}
        if not shown.strip():
            return empty
        try:
            value = json.loads(shown)
        except json.JSONDecodeError as e:
            problems.append(f"{label}: bad JSON at line {e.lineno}, column {e.colno}: {e.msg}")
            return original
        if not isinstance(value, dict):
            problems.append(f"{label}: must be a JSON object {{...}}")
            return original
        if field == "creator_notes_multilingual" and not all(isinstance(v, str) for v in value.values()):
            problems.append(f"{label}: each language must map to a text")
            return original
        if field == "character_book" and not isinstance(value.get("entries", []), list):
            problems.append(f"{label}: \"entries\" must be a list")
            return original
        return value

    # --- actions -----------------------------------------------------------------------------------------
    def action_save(self) -> None:
        """Check the form, write the card and close; problems are listed and nothing is written."""
        card, problems = self.read_form()
        if card != self.card:
            # V3 cards carry their own timestamps (seconds since the epoch).
            now = int(time.time())
            card = dataclasses.replace(card, modification_date=now, creation_date=card.creation_date or now)
        target = None
        if not problems:
            try:
                # A renamed card's file is renamed too, and its chats move with it.
                target = save_edited_card(card, self.card, self.path)
            except RpchatError as e:
                problems.append(str(e))
        self.query_one("#problems", Static).update(strip_controls("\n".join(problems)))
        if problems or target is None:
            self.notify(strip_controls(problems[0]), title="Card not saved", severity="error")
            return
        renamed = self.path is not None and target != self.path and not is_bundled(self.path)
        self.dismiss(SavedCard(card, target, renamed_from=self.path if renamed else None))

    @on(Button.Pressed, "#save")
    def _save_pressed(self) -> None:
        self.action_save()

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        """Close; asks first when there are unsaved changes."""
        card, _ = self.read_form()
        if card == self.card:
            self.dismiss(None)
            return

        def answered(discard: bool | None) -> None:
            if discard:
                self.dismiss(None)

        self.app.push_screen(ConfirmDialog("Discard the changes to this card?", yes="Discard", danger=True),
                             answered)

    @on(Button.Pressed, "#change-avatar")
    def _change_avatar(self) -> None:
        def picked(path: Path | None) -> None:
            if path is None:
                return
            try:
                self._avatar = read_image(path)
            except RpchatError as e:
                self.notify(strip_controls(str(e)), severity="error")
                return
            self.query_one("#avatar", AvatarView).set_image(self._avatar)

        self.app.push_screen(PathPrompt("Picture for this card", suffixes=IMAGE_SUFFIXES), picked)



def edit_card(screen: Screen[Any], card_path: Path | None, saved: Callable[[SavedCard], None]) -> None:
    """Open the card editor on ``card_path`` (a new card when None) over ``screen``; ``saved`` hears about
    the card it wrote. A card that cannot be read is a notice, not an editor."""
    try:
        card = load_card(card_path) if card_path is not None else Card(name="New character")
    except RpchatError as e:
        screen.notify(str(e), severity="error", markup=False)
        return

    def done(result: SavedCard | None) -> None:
        if result is not None:
            saved(result)

    screen.app.push_screen(CardEditor(card, card_path), done)
