"""The prompt inspector: the exact text that will be sent, where history was cut, tokens and lore.

Push ``PromptInspector(built, n_ctx=..., max_new=...)``. The prompt is shown as data: control
characters appear as visible symbols (ESC as ``␛``) and nothing is parsed as markup.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, ContentSwitcher, Footer, Static, TextArea

from rpchat.prompt.builder import BuiltPrompt
from rpchat.prompt.lorebook import LoreHit
from rpchat.text import strip_controls
from rpchat.tui.bindings import bindings_for


def prompt_summary(built: BuiltPrompt, n_ctx: int | None = None, max_new: int | None = None) -> str:
    """One paragraph: tokens against the budget, the cut, stop strings and the lore that fired."""
    parts: list[str] = []
    head = f"Format {built.format_name or '?'}, mode {built.mode}."
    tokens = f"{built.n_tokens:,} tokens" if built.n_tokens is not None else f"{len(built.text):,} characters"
    if n_ctx:
        reply = f", {max_new:,} kept for the reply" if max_new else ""
        tokens += f" of n_ctx {n_ctx:,}{reply}"
    elif built.budget:
        tokens += f" of a {built.budget:,}-token budget"
    parts.append(f"{head} Prompt: {tokens}.")
    if built.dropped:
        first = f"; the prompt starts again at turn {built.first_kept + 1}" if built.first_kept is not None else ""
        n = len(built.dropped)
        parts.append(f"Cut: {n} older turn{'s' if n != 1 else ''} left out to fit the context{first}.")
    else:
        parts.append("Cut: none, the whole chat fits.")
    if built.note is not None:
        where = f"depth {built.note.depth}, as {built.note.role}" if built.note.position == "in_chat" else \
            built.note.position.replace("_", " the ")
        parts.append(f"Author's note: {where}.")
    if built.stop:
        parts.append("Stops at: " + ", ".join(_quote(s) for s in built.stop) + ".")
    return " ".join(parts)


def lore_lines(built: BuiltPrompt) -> list[str]:
    """One line per lorebook entry that fired (and per entry the token budget left out), with why."""
    if built.lore is None:
        return []
    lines = [_describe_hit(hit) for hit in built.lore.hits]
    lines += [_describe_hit(hit) + " - left out: over the lorebook budget" for hit in built.lore.over_budget]
    return lines


def _describe_hit(hit: LoreHit) -> str:
    name = hit.name.strip() or f"entry {hit.uid}"
    tokens = f", {hit.tokens} tokens" if hit.tokens is not None else ""
    book = f" of {hit.book}" if hit.book.strip() else ""
    return " ".join(f"{name}{book} ({hit.reason}; {hit.position}{tokens})".split())


def _quote(stop: str) -> str:
    return '"' + stop.replace("\\", "\\\\").replace("\n", "\\n") + '"'


def segments_text(built: BuiltPrompt) -> Text:
    """The prompt with format text highlighted and card/chat text plain, to see which is which."""
    text = Text(no_wrap=False)
    for seg in built.segments:
        shown = strip_controls(seg.text)
        text.append(shown, style="bold reverse" if seg.kind == "template" else "")
    return text


class PromptInspector(ModalScreen[None]):
    """Shows a `BuiltPrompt` exactly; ``t`` toggles between plain text and the template view."""

    BINDINGS: ClassVar[list[BindingType]] = bindings_for("inspector")

    def __init__(self, built: BuiltPrompt, *, n_ctx: int | None = None, max_new: int | None = None,
                 title: str = "Prompt inspector", origins: list[str] | None = None) -> None:
        super().__init__()
        self.built, self._n_ctx, self._max_new, self._title = built, n_ctx, max_new, title
        self._origins = origins or []  # "format limamono, from the model", ...

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self._title, id="inspector-title", markup=False)
            yield Static(prompt_summary(self.built, self._n_ctx, self._max_new), id="summary", markup=False)
            if self._origins:
                yield Static(strip_controls("Chosen: " + "; ".join(self._origins) + "."), id="origins",
                             markup=False)
            lore = lore_lines(self.built)
            lore_text = ("Lorebook: " + "; ".join(lore)) if lore else "Lorebook: no entries fired."
            yield Static(strip_controls(lore_text), id="lore", markup=False)
            with ContentSwitcher(initial="prompt-text", id="views"):
                yield TextArea(strip_controls(self.built.text), read_only=True, show_line_numbers=True,
                               soft_wrap=True, id="prompt-text")
                with VerticalScroll(id="prompt-segments"):
                    yield Static(segments_text(self.built), markup=False)
            with Horizontal(id="buttons"):
                yield Button("Copy", id="copy", compact=True)
                yield Button("Close", id="close", variant="primary", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#prompt-text", TextArea).focus()

    def action_toggle_view(self) -> None:
        """Switch between the plain prompt and the view that highlights format text."""
        switcher = self.query_one("#views", ContentSwitcher)
        switcher.current = "prompt-segments" if switcher.current == "prompt-text" else "prompt-text"

    @on(Button.Pressed, "#copy")
    def action_copy(self) -> None:
        """Copy the exact prompt to the clipboard."""
        self.app.copy_to_clipboard(self.built.text)
        self.notify("Prompt copied to the clipboard.")

    @on(Button.Pressed, "#close")
    def action_close(self) -> None:
        self.dismiss(None)
