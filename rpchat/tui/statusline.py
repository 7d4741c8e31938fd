"""The chat's status line: parts ranked by importance, fitted to the width it gets.

A narrow terminal (or the sidebar) leaves less room than the full line needs; instead of cutting the
end (where the "esc stops" hint lives), the least important parts are shortened, then dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.text import Text
from textual.visual import VisualType
from textual.widgets import Static

SEPARATOR = " | "


@dataclass(frozen=True)
class StatusPart:
    """One piece of the status line: its forms from fullest to shortest, and how much it matters.

    A higher ``rank`` survives longer; a part with ``keep`` set is shortened but never dropped.
    """

    forms: tuple[str, ...]
    rank: int
    keep: bool = False

    @classmethod
    def of(cls, *forms: str, rank: int, keep: bool = False) -> StatusPart:
        """A part from its forms, fullest first (empty forms are skipped)."""
        return cls(tuple(f for f in forms if f), rank, keep)


def fit_status(parts: Sequence[StatusPart], width: int) -> str:
    """The line for ``width`` cells: the least important part is shortened, then dropped, until it fits.

    When even the kept parts in their shortest forms do not fit, the result is longer than ``width``
    (the widget then ends it with an ellipsis).
    """
    parts = [p for p in parts if p.forms]
    # Which form each part shows; len(forms) means dropped.
    choice = [0] * len(parts)

    def line() -> str:
        return SEPARATOR.join(p.forms[c] for p, c in zip(parts, choice, strict=True) if c < len(p.forms))

    # Least important first; among equals the rightmost goes first (the line reads left to right).
    order = sorted(range(len(parts)), key=lambda i: (parts[i].rank, -i))
    for i in order:
        last = len(parts[i].forms) - (1 if parts[i].keep else 0)
        while cell_len(line()) > width and choice[i] < last:
            choice[i] += 1
        if cell_len(line()) <= width:
            break
    return line()


class StatusLine(Static):
    """A one-line status that fits its parts to its own width, again on every resize."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id, markup=False)
        self._parts: tuple[StatusPart, ...] = ()

    def show(self, parts: Sequence[StatusPart]) -> None:
        """Show these parts (fitted when drawn)."""
        self._parts = tuple(parts)
        self.refresh()

    @property
    def full_text(self) -> str:
        """Every part in its fullest form, as if the line were wide enough."""
        return SEPARATOR.join(p.forms[0] for p in self._parts if p.forms)

    def render(self) -> VisualType:
        width = self.content_size.width
        text = fit_status(self._parts, width) if width > 0 else self.full_text
        return Text(text, no_wrap=True, overflow="ellipsis", end="")
