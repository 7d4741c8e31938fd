"""The chat transcript: one light `Static` per finished turn, one streaming widget for the live reply.

Widget count, not parsing, is what stalls a long chat, so only the last `WINDOW` turns are mounted;
scrolling to the top mounts the previous batch. The view follows new text only while it is at the
bottom (Textual's scroll anchor releases when the user scrolls up).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from rich.console import RenderableType
from rich.style import Style
from rich.table import Table
from rich.text import Text
from textual.binding import BindingType
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Static

from rpchat.chat.model import Turn
from rpchat.tui.avatar import render_avatar
from rpchat.tui.bindings import bindings_for
from rpchat.tui.prose import clean, prose_text

WINDOW = 50  # turns mounted at first, and per "load more"

Styles = Mapping[str, Style]


def turn_text(turn: Turn, styles: Styles | None, *, greeting: bool = False, text: str | None = None) -> Text:
    """A turn as Rich text: the speaker's name, the prose, and a swipe counter / unfinished mark."""
    body = turn.text if text is None else text
    out = Text(end="")
    out.append(clean(turn.name) or ("You" if turn.is_user else "?"), style="bold")
    marks = []
    if len(turn.swipes) > 1:
        marks.append(f"< {turn.swipe_id + 1}/{len(turn.swipes)} >")
    if greeting:
        marks.append("greeting")
    if turn.narrator:
        marks.append("narrator")
    if turn.unfinished:
        marks.append("unfinished")
    if turn.hidden:
        marks.append("hidden from the AI")
    if marks:
        out.append("  " + "  ".join(marks), style="dim")
    out.append("\n")
    out.append_text(prose_text(body, styles))
    if turn.hidden:
        out.stylize("dim")  # still readable, plainly not part of the conversation the model sees
    return out


# A group chat shows each message's speaker as a small picture beside it.
AVATAR_COLS, AVATAR_ROWS = 6, 3


def with_avatar(text: Text, avatar: bytes | None) -> RenderableType:
    """``text`` with the speaker's picture on its left (``text`` alone without one)."""
    if avatar is None:
        return text
    grid = Table.grid(padding=(0, 1))
    grid.add_column(width=AVATAR_COLS)
    grid.add_column(ratio=1)
    grid.add_row(render_avatar(avatar, AVATAR_COLS, AVATAR_ROWS), text)
    return grid


class TurnView(Static):
    """One finished turn: a single Static holding Rich text (never markup)."""

    DEFAULT_CSS = """
    TurnView { padding: 0 1; margin-bottom: 1; }
    TurnView.-user { background: $boost; }
    TurnView.-hidden { text-style: italic; }
    TurnView.-cursor { background: $primary 20%; border-left: outer $primary; }
    """

    def __init__(self, index: int, turn: Turn, styles: Styles | None, *, greeting: bool = False,
                 avatar: bytes | None = None) -> None:
        super().__init__(with_avatar(turn_text(turn, styles, greeting=greeting), avatar), markup=False,
                         classes="-user" if turn.is_user else "")
        self.set_class(turn.hidden, "-hidden")
        self.index = index
        self.avatar = avatar

    def on_click(self) -> None:
        # A click puts the message cursor on this turn.
        transcript = self.parent
        if isinstance(transcript, Transcript):
            transcript.cursor = self.index
            transcript.focus()
            transcript.paint_cursor()

    def show(self, turn: Turn, styles: Styles | None, *, greeting: bool = False, avatar: bytes | None = None) -> None:
        """Re-render after an edit or a swipe."""
        self.set_class(turn.is_user, "-user")
        self.set_class(turn.hidden, "-hidden")
        self.avatar = avatar
        self.update(with_avatar(turn_text(turn, styles, greeting=greeting), avatar))


class StreamingTurn(Static):
    """The live reply. Pieces are buffered and painted at most `FLUSH_HZ` times a second.

    Its height grows in steps of `HEIGHT_STEP` lines: a height change makes Textual reflow the whole
    screen, a repaint at the same height touches only this widget, so most flushes stay cheap.
    """

    FLUSH_HZ = 20
    HEIGHT_STEP = 4

    DEFAULT_CSS = """
    StreamingTurn { padding: 0 1; margin-bottom: 1; border-left: outer $accent; height: 3; }
    """

    def __init__(self, turn: Turn, styles: Styles | None, base: str = "", avatar: bytes | None = None) -> None:
        super().__init__("", markup=False)
        self._avatar = avatar
        self._turn = turn
        self._styles = styles
        self._base = base
        self._pieces: list[str] = []
        self._dirty = True
        self._height_lines = 0

    @property
    def text(self) -> str:
        generated = "".join(self._pieces)
        return self._base + generated if self._base else generated.lstrip()

    def on_mount(self) -> None:
        self.set_interval(1 / self.FLUSH_HZ, self._flush)
        self.call_after_refresh(self._flush)

    def append(self, piece: str) -> None:
        """Add a piece of the reply (painted at the next flush)."""
        self._pieces.append(piece)
        self._dirty = True

    def _flush(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        body = self.text
        out = turn_text(self._turn, self._styles, text=body)
        out.append(" \u258c" if body else "\u2026", style="dim")
        width = self.content_region.width - (AVATAR_COLS + 1 if self._avatar is not None else 0)
        lines = len(out.wrap(self.app.console, width)) if width > 0 else 2
        if lines > self._height_lines:
            self._height_lines = max(lines, AVATAR_ROWS if self._avatar is not None else 0) + self.HEIGHT_STEP - 1
            self.styles.height = self._height_lines  # one reflow per step
        self.update(with_avatar(out, self._avatar), layout=False)


class CutMarker(Static):
    """Shown where older turns fall out of the prompt."""

    DEFAULT_CSS = """
    CutMarker { color: $warning; text-align: center; margin-bottom: 1; }
    """

    def __init__(self, dropped: int) -> None:
        noun = "turn above is" if dropped == 1 else "turns above are"
        label = f"\u2500\u2500 {dropped} older {noun} out of the prompt \u2500\u2500"
        super().__init__(label, markup=False)


class MoreAbove(Static):
    """A hint that earlier turns are not mounted yet (scroll up or press a key to load them)."""

    DEFAULT_CSS = """
    MoreAbove { color: $text-muted; text-align: center; margin-bottom: 1; }
    """

    def __init__(self, hidden: int) -> None:
        super().__init__(f"\u2191 {hidden} earlier turns (scroll up to load)", markup=False)


class Transcript(VerticalScroll, can_focus=True):
    """The scrollable list of turns, with a message cursor for turn operations."""

    BINDINGS: ClassVar[list[BindingType]] = bindings_for("transcript")

    DEFAULT_CSS = """
    Transcript { height: 1fr; padding: 0 1; }
    Transcript:focus { border-left: tall $primary; }
    """

    class CursorAction(Message):
        """A turn operation asked for from the message cursor (the chat screen carries it out)."""

        def __init__(self, action: str, index: int) -> None:
            super().__init__()
            self.action = action
            self.index = index

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.turns: list[Turn] = []
        self.styles_map: Styles | None = None
        self.first_mounted = 0  # index of the first mounted turn
        self.first_kept: int | None = None  # history index where the prompt starts after a cut
        self.cursor: int | None = None
        self.streaming: StreamingTurn | None = None
        self._loading_more = False
        # A group chat's pictures by card file name (a message's ``original_avatar``); empty in a 1:1 chat.
        self.avatars: dict[str, bytes] = {}

    def avatar_of(self, turn: Turn) -> bytes | None:
        """The picture of the member who wrote ``turn`` (group chats only)."""
        key = turn.unknown.get("original_avatar")
        return self.avatars.get(key) if isinstance(key, str) and not turn.is_user else None

    # --- building ---------------------------------------------------------------------------------
    def show_turns(self, turns: list[Turn], styles: Styles | None, first_kept: int | None = None) -> None:
        """Replace everything with the last `WINDOW` turns of ``turns``."""
        self.turns = turns
        self.styles_map = styles
        self.first_kept = first_kept
        self.streaming = None
        self.first_mounted = max(0, len(turns) - WINDOW)
        with self.app.batch_update():
            self.remove_children()
            self.mount_all(self._widgets(self.first_mounted, len(turns)))
        if self.cursor is not None and self.cursor >= len(turns):
            self.cursor = None
        self.paint_cursor()
        self.scroll_end(animate=False, immediate=False)

    def _widgets(self, start: int, end: int) -> list[Static]:
        out: list[Static] = []
        if start > 0 and start == self.first_mounted:
            out.append(MoreAbove(start))
        for i in range(start, end):
            if self.first_kept and i == self.first_kept:
                out.append(CutMarker(self.first_kept))
            out.append(TurnView(i, self.turns[i], self.styles_map, greeting=self._is_greeting(i),
                                avatar=self.avatar_of(self.turns[i])))
        return out

    def _is_greeting(self, index: int) -> bool:
        return index == 0 and not self.turns[0].is_user and not self.turns[0].narrator

    def view_of(self, index: int) -> TurnView | None:
        """The mounted widget of turn ``index`` (None when not mounted)."""
        for w in self.query(TurnView):
            if w.index == index:
                return w
        return None

    def refresh_turn(self, index: int) -> None:
        """Re-render one turn in place (after an edit, a swipe, a finished reply)."""
        view = self.view_of(index)
        if view is not None and index < len(self.turns):
            view.show(self.turns[index], self.styles_map, greeting=self._is_greeting(index),
                      avatar=self.avatar_of(self.turns[index]))

    def load_more(self) -> bool:
        """Mount the previous batch of turns above the first mounted one; False when all are mounted."""
        if self.first_mounted == 0 or self._loading_more:
            return False
        self._loading_more = True
        old_first = self.first_mounted
        new_first = max(0, old_first - WINDOW)
        anchor = self.view_of(old_first)
        for hint in self.query(MoreAbove):
            hint.remove()
        self.first_mounted = new_first
        widgets = self._widgets(new_first, old_first)
        if anchor is not None:
            self.mount_all(widgets, before=anchor)
        else:
            self.mount_all(widgets)

        def keep_place() -> None:
            # Keep the turn the user was reading in view instead of jumping to the new top.
            if anchor is not None:
                self.scroll_to_widget(anchor, animate=False, top=True)
            self._loading_more = False

        self.call_after_refresh(keep_place)
        return True

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if new <= 0 and old > 0 and self.first_mounted > 0:
            self.load_more()

    # --- streaming -----------------------------------------------------------------------------------
    def start_stream(self, turn: Turn, replace_index: int | None = None, base: str = "") -> StreamingTurn:
        """Mount the live-reply widget at the end, or in place of turn ``replace_index``."""
        widget = StreamingTurn(turn, self.styles_map, base, self.avatar_of(turn))
        old = self.view_of(replace_index) if replace_index is not None else None
        if old is not None:
            self.mount(widget, after=old)
            old.remove()
        else:
            self.mount(widget)
        self.streaming = widget
        return widget

    def end_stream(self, turns: list[Turn]) -> None:
        """Swap the live widget for light turn widgets matching ``turns`` (the saved chat)."""
        self.turns = turns
        live, self.streaming = self.streaming, None
        mounted = {w.index for w in self.query(TurnView)}
        new = [i for i in range(self.first_mounted, len(turns)) if i not in mounted]
        widgets = [TurnView(i, turns[i], self.styles_map, greeting=self._is_greeting(i), avatar=self.avatar_of(turns[i]))
                   for i in new]
        if widgets:
            if live is not None:
                self.mount_all(widgets, before=live)
            else:
                self.mount_all(widgets)
        for w in self.query(TurnView):
            if w.index >= len(turns):
                w.remove()
            elif w.index in mounted:
                w.show(turns[w.index], self.styles_map, greeting=self._is_greeting(w.index),
                       avatar=self.avatar_of(turns[w.index]))
        if live is not None:
            live.remove()

    # --- message cursor --------------------------------------------------------------------------------
    def on_focus(self) -> None:
        if self.cursor is None and self.turns:
            self.cursor = len(self.turns) - 1

    def watch_has_focus(self, _focused: bool) -> None:
        # has_focus changes after on_focus/on_blur ran, so paint from its watcher.
        self.paint_cursor()

    def action_cursor(self, step: int) -> None:
        if not self.turns:
            return
        current = self.cursor if self.cursor is not None else len(self.turns)
        target = max(0, min(len(self.turns) - 1, current + step))
        if target < self.first_mounted:
            self.load_more()
        self.cursor = target
        self.paint_cursor()
        view = self.view_of(target)
        if view is not None:
            self.scroll_to_widget(view, animate=False)

    def paint_cursor(self) -> None:
        """Highlight the turn under the message cursor (only while the transcript has focus)."""
        show = self.has_focus
        for w in self.query(TurnView):
            w.set_class(show and w.index == self.cursor, "-cursor")

    def _act(self, action: str) -> None:
        if self.cursor is not None:
            self.post_message(self.CursorAction(action, self.cursor))

    def action_edit_turn(self) -> None:
        self._act("edit")

    def action_delete_turn(self) -> None:
        self._act("delete")

    def action_branch_turn(self) -> None:
        self._act("branch")

    def action_copy_turn(self) -> None:
        self._act("copy")

    def action_hide_turn(self) -> None:
        self._act("hide")

    def action_tokens_turn(self) -> None:
        self._act("tokens")

    def action_swipe(self, step: int) -> None:
        self._act("swipe-left" if step < 0 else "swipe-right")

    def action_focus_input(self) -> None:
        self._act("focus-input")
