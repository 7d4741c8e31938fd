"""Small reusable modal dialogs: confirm, text prompt, path prompt, error.

Push one with ``app.push_screen(ConfirmDialog("Delete Marisol?"), callback)`` or, from a worker,
``await app.push_screen_wait(...)``. Every text shown here is data, never Textual markup.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from textual import on
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Input, Static

from rpchat.errors import RpchatError
from rpchat.text import strip_controls
from rpchat.tui.bindings import bindings_for

_R = TypeVar("_R")


class Dialog(ModalScreen[_R]):
    """A small centred dialog: a title, a message, maybe a problem, buttons on the right (styled in
    rpchat.tcss by this type, so every dialog looks alike)."""


def _plain(text: str) -> Static:
    # Dialog text often quotes card names or file paths: shown as data, controls made visible.
    return Static(strip_controls(text), markup=False)


class ConfirmDialog(Dialog[bool]):
    """Ask a yes/no question; dismisses with True for yes, False for no or Esc."""

    BINDINGS: ClassVar[list[BindingType]] = bindings_for("confirm")

    def __init__(self, message: str, *, title: str = "Confirm", yes: str = "Yes", no: str = "No",
                 danger: bool = False) -> None:
        super().__init__()
        self._message, self._title, self._yes, self._no, self._danger = message, title, yes, no, danger

    def compose(self) -> ComposeResult:
        with Vertical():
            yield _plain(self._title).add_class("dialog-title")
            yield _plain(self._message).add_class("dialog-message")
            with Horizontal(classes="dialog-buttons"):
                yield Button(self._no, id="no")
                yield Button(self._yes, id="yes", variant="error" if self._danger else "primary")

    def on_mount(self) -> None:
        # Focus "no" for destructive questions, so a stray Enter cannot delete anything.
        self.query_one("#no" if self._danger else "#yes", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    def action_move_button(self, step: int) -> None:
        """Focus the button left (-1) or right (+1) of the focused one, stopping at the ends."""
        buttons = list(self.query(Button))
        current = buttons.index(self.focused) if self.focused in buttons else 0
        buttons[max(0, min(len(buttons) - 1, current + step))].focus()


_T = TypeVar("_T")


class LinePrompt(Dialog[_T | None], Generic[_T]):
    """Ask for one line; `check` refuses bad values in place, `result_value` converts a good one."""

    BINDINGS: ClassVar[list[BindingType]] = bindings_for("prompt")
    SELECT_ON_FOCUS: ClassVar[bool] = True  # typing replaces the suggested value

    def __init__(self, title: str, value: str = "", *, placeholder: str = "", allow_empty: bool = False,
                 message: str = "") -> None:
        super().__init__()
        self._title, self._value, self._placeholder = title, value, placeholder
        self._allow_empty, self._message = allow_empty, message

    def compose(self) -> ComposeResult:
        with Vertical():
            yield _plain(self._title).add_class("dialog-title")
            if self._message:
                yield _plain(self._message).add_class("dialog-message")
            yield Input(strip_controls(self._value), placeholder=self._placeholder, id="value",
                        select_on_focus=self.SELECT_ON_FOCUS)
            yield Static("", id="error", classes="dialog-error", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("OK", id="ok", variant="primary")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def check(self, value: str) -> str | None:
        """The problem with ``value`` as one line, or None when it can be accepted."""
        if not value.strip() and not self._allow_empty:
            return "Please enter a value."
        return None

    def show_error(self, problem: str) -> None:
        """Show a problem under the input and keep the dialog open."""
        self.query_one("#error", Static).update(strip_controls(problem))

    def _submit(self) -> None:
        value = self.query_one(Input).value
        problem = self.check(value)
        if problem:
            self.show_error(problem)
            return
        self.dismiss(self.result_value(value))

    def result_value(self, value: str) -> _T:
        """What the dialog returns for an accepted value."""
        raise NotImplementedError

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self._submit()

    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        self._submit()

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class TextPrompt(LinePrompt[str]):
    """Ask for one line of text; dismisses with the text, or None on Esc."""


    def result_value(self, value: str) -> str:
        return value


class PathPrompt(LinePrompt[Path]):
    """Ask for a file path (``~`` expands); dismisses with a `Path`, or None on Esc.

    ``must_exist`` refuses paths that are not there; ``suffixes`` (e.g. ``(".png", ".json")``) limits
    the file types, so the caller gets a usable file or nothing.
    """

    SELECT_ON_FOCUS = False  # a suggested path is edited (its name, its extension), not retyped

    def __init__(self, title: str, value: str = "", *, must_exist: bool = True,
                 suffixes: Sequence[str] = (), directory: bool = False, message: str = "") -> None:
        hint = ", ".join(suffixes) if suffixes else ("a folder" if directory else "a file")
        super().__init__(title, value, placeholder=f"path to {hint}", message=message)
        self._must_exist, self._directory = must_exist, directory
        self._suffixes = tuple(s.lower() for s in suffixes)

    def check(self, value: str) -> str | None:
        if not value.strip():
            return "Please enter a path."
        path = Path(value.strip()).expanduser()
        if self._must_exist and not path.exists():
            return f"{path}: no such file or folder"
        if self._must_exist and self._directory and not path.is_dir():
            return f"{path}: not a folder"
        if self._must_exist and not self._directory and path.is_dir():
            return f"{path}: is a folder, not a file"
        if self._suffixes and not self._directory and path.suffix.lower() not in self._suffixes:
            return f"{path}: expected {', '.join(self._suffixes)}"
        if not self._must_exist and not self._directory and not path.parent.exists():
            # A file to write: its folder must be there, or a path typed after the suggested one
            # (".../chat.jsonl/tmp/out.jsonl") would silently become new folders.
            return f"{path.parent}: no such folder"
        return None

    def result_value(self, value: str) -> Path:
        return Path(value.strip()).expanduser()


class ErrorDialog(Dialog[None]):
    """Show an error message until the user closes it."""

    BINDINGS: ClassVar[list[BindingType]] = bindings_for("error")

    def __init__(self, message: str, *, title: str = "Error") -> None:
        super().__init__()
        self._message, self._title = message, title

    def compose(self) -> ComposeResult:
        with Vertical():
            yield _plain(self._title).add_class("dialog-title")
            yield _plain(self._message).add_class("dialog-message")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Close", id="close", variant="primary")

    def on_mount(self) -> None:
        self.query_one(Button).focus()

    @on(Button.Pressed)
    def action_close(self) -> None:
        self.dismiss(None)


def save_to_path(screen: Screen[Any], title: str, write: Callable[[Path], object], *, value: str = "",
                 suffixes: Sequence[str] = (), message: str = "") -> None:
    """Ask where to save (asking again before replacing a file), then ``write(path)``; a failure is a notice.

    The export actions of the library and the chat use it, with the same core calls as the CLI.
    """
    app = screen.app

    def write_and_tell(path: Path) -> None:
        try:
            write(path)
        except (RpchatError, OSError) as e:
            app.notify(str(e), severity="error", markup=False)
            return
        app.notify(f"Wrote {path}", markup=False)

    def chosen(path: Path | None) -> None:
        if path is None:
            return
        if not path.exists():
            write_and_tell(path)
            return
        app.push_screen(ConfirmDialog(f"{path} exists. Replace it?", title=title, yes="Replace", danger=True),
                        lambda yes: write_and_tell(path) if yes else None)

    app.push_screen(PathPrompt(title, value, must_exist=False, suffixes=suffixes, message=message), chosen)
