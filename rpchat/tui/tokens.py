"""The token view: a reply token by token, coloured by probability, with each token's alternatives.

Left/right move between tokens, up/down between the alternatives of the token under the cursor,
Enter makes a new swipe from the highlighted alternative (dismissing with ``(step, alternative)``),
Esc closes. Token text is data: it goes into `rich.text.Text` as plain strings, never as markup.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from rpchat.engine.alternatives import Alternative, TokenStep, TokenTrace, is_chosen
from rpchat.tui.bindings import bindings_for
from rpchat.tui.prose import clean

# Probability bands, most likely first: (at least, style). Colour-blind users still get the figure.
BANDS: tuple[tuple[float, str], ...] = (
    (0.8, "green"),
    (0.5, "yellow"),
    (0.2, "dark_orange"),
    (0.0, "red"),
)
Pick = tuple[int, Alternative]


def band(prob: float) -> str:
    """The colour of a token with probability ``prob``."""
    return next(style for floor, style in BANDS if prob >= floor)


def shown_piece(text: str) -> str:
    """A token's text as the view draws it: control characters inert, an empty piece (the first
    byte of a character split over tokens) as a small box, a newline marked and kept."""
    if not text:
        return "\u25af"
    return clean(text).replace("\n", "\u21b5\n")


def percent(prob: float) -> str:
    return f"{prob * 100:.1f}%" if prob >= 0.001 else "<0.1%"


class TokenScreen(ModalScreen[Pick | None]):
    """Pick a token of a reply and one of its alternatives."""

    BINDINGS: ClassVar[list[BindingType]] = bindings_for("tokens")
    DEFAULT_CSS = """
    TokenScreen { align: center middle; }
    TokenScreen > Vertical { width: 90%; height: 90%; border: thick $primary 60%; background: $surface;
                             padding: 0 1; }
    TokenScreen #token-help { color: $text-muted; height: auto; }
    TokenScreen #token-scroll { height: 1fr; border-bottom: solid $primary 30%; }
    TokenScreen #token-alternatives { height: auto; padding-top: 1; }
    """

    def __init__(self, trace: TokenTrace, title: str) -> None:
        super().__init__()
        self.trace = trace
        self.title_text = title
        self.step = 0
        self.alt = 0

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self._help(), id="token-help", markup=False)
            with VerticalScroll(id="token-scroll"):
                yield Static(id="token-text", markup=False)
            yield Static(id="token-alternatives", markup=False)

    def on_mount(self) -> None:
        self._highlight_current()
        self._paint()

    def _help(self) -> str:
        return (f"{clean(self.title_text)}: {len(self.trace.steps)} tokens, coloured by probability "
                "(green >= 80%, yellow >= 50%, orange >= 20%, red below). "
                "Left/Right: token   Up/Down: alternative   Enter: new swipe from it   Esc: close")

    @property
    def current(self) -> TokenStep | None:
        steps = self.trace.steps
        return steps[self.step] if steps else None

    def token_text(self) -> Text:
        """The whole reply, each token in its band's colour, the cursor token reversed."""
        out = Text(clean(self.trace.base), style="dim", end="")
        for i, step in enumerate(self.trace.steps):
            style = band(step.prob) + (" reverse bold" if i == self.step else "")
            out.append(shown_piece(step.text), style=style)
        return out

    def alternatives_text(self) -> Text:
        """The cursor token and its alternatives, the highlighted one marked."""
        step = self.current
        if step is None:
            return Text("No tokens.")
        out = Text(f"Token {self.step + 1}/{len(self.trace.steps)}: ", end="")
        out.append(clean(repr(step.text)), style=band(step.prob))
        out.append(f" {percent(step.prob)}\n")
        for i, alt in enumerate(step.top):
            mark = "> " if i == self.alt else "  "
            line = Text(mark, style="bold" if i == self.alt else "", end="")
            line.append(f"{percent(alt.prob):>7}  ", style=band(alt.prob))
            line.append(clean(repr(alt.text)), style="reverse" if i == self.alt else "")
            if is_chosen(step, alt):
                line.append("  (chosen)", style="dim")
            elif not alt.whole:
                line.append("  (part of a character: cannot be chosen alone)", style="dim")
            out.append_text(line)
            out.append("\n")
        return out

    def _highlight_current(self) -> None:
        """Put the alternative highlight on the first one that is not the token already there."""
        step = self.current
        self.alt = 0
        if step is not None:
            self.alt = next((i for i, a in enumerate(step.top) if not is_chosen(step, a)), 0)

    def _paint(self) -> None:
        self.query_one("#token-text", Static).update(self.token_text())
        self.query_one("#token-alternatives", Static).update(self.alternatives_text())

    def action_token(self, delta: int) -> None:
        if not self.trace.steps:
            return
        self.step = max(0, min(len(self.trace.steps) - 1, self.step + delta))
        self._highlight_current()
        self._paint()

    def action_alternative(self, delta: int) -> None:
        step = self.current
        if step is None or not step.top:
            return
        self.alt = max(0, min(len(step.top) - 1, self.alt + delta))
        self._paint()

    def action_choose(self) -> None:
        step = self.current
        if step is None or not step.top:
            return
        alt = step.top[self.alt]
        if is_chosen(step, alt):
            self.notify("That is the token already there; pick another alternative.", severity="warning")
            return
        if not alt.whole:
            self.notify("That alternative is part of a character split over tokens.", severity="warning")
            return
        self.dismiss((self.step, alt))

    def action_dismiss_view(self) -> None:
        self.dismiss(None)
