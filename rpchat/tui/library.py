"""The character library: cards with avatars, filter by typing, import/new/duplicate/delete, chats.

The filter box keeps the focus, so typing filters at once; Up/Down move through the cards and Enter
opens the card's chats (resume, start new, branch).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Input, OptionList, ProgressBar, Static
from textual.widgets.option_list import Option

from rpchat.cards import CardEntry, delete_card, duplicate_card, import_card, list_cards, load_card, save_card
from rpchat.cards.library import card_files
from rpchat.chat.library import (
    ChatEntry,
    chats_folder,
    count_chats,
    export_st_chat,
    import_st_chat,
    last_chat,
    latest_chat,
    list_chats,
)
from rpchat.chat.recent import recorded_chat
from rpchat.chat.store import load_chat
from rpchat.errors import RpchatError
from rpchat.group.library import groups_dir
from rpchat.paths import profile
from rpchat.tui.avatar import AvatarView
from rpchat.tui.bindings import bindings_for
from rpchat.tui.card_editor import SavedCard, edit_card
from rpchat.tui.dialogs import ConfirmDialog, PathPrompt, save_to_path
from rpchat.tui.group import GroupsDialog, NewGroupDialog
from rpchat.tui.host import Host, host_of
from rpchat.tui.prose import clean

CARD_SUFFIXES = (".png", ".json", ".charx")


def entry_matches(entry: CardEntry, query: str) -> bool:
    """True when every word of ``query`` is in the card's name, tags or creator notes."""
    hay = " ".join((entry.name, " ".join(entry.tags), entry.creator_notes)).casefold()
    return all(word in hay for word in query.casefold().split())


def entry_label(entry: CardEntry) -> Text:
    """One list row: the name, then tags (or the load error), dimmed."""
    text = Text(clean(entry.name), style="bold" if not entry.error else "dim strike", no_wrap=True,
                overflow="ellipsis")
    if entry.error:
        text.append(f"  {clean(entry.error)}", style="red")
    elif entry.tags:
        text.append("  " + clean(", ".join(entry.tags[:4])), style="dim")
    if entry.bundled:
        text.append("  (bundled)", style="dim italic")
    return text


def _short_date(date: str) -> str:
    """A send date to the minute: rpchat's ISO stamps are cut there; SillyTavern's own ("May 1, 2024
    12:06pm") and other free-form dates are kept whole (to a sane length)."""
    if _ISO_MINUTE.match(date):
        return date[:16].replace("T", " ")
    return date[:32]


_ISO_MINUTE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d")


class ChatsDialog(ModalScreen["tuple[str, Path | None] | None"]):
    """A card's chats: start a new one, resume one (Enter), or branch one (b)."""

    BINDINGS: ClassVar[list[BindingType]] = bindings_for("chats")

    def __init__(self, name: str, chats: list[ChatEntry], last: Path | None = None, *, export: bool = False) -> None:
        super().__init__()
        self._character = name
        self._chats = chats
        self._last = last  # the chat used last, where the cursor starts when it is in the list
        self._export = export  # opened to pick a chat to export: Enter exports

    def compose(self) -> ComposeResult:
        options = [Option(Text("+ Start a new chat", style="bold"), id="new")]
        for i, entry in enumerate(self._chats):
            label = Text(clean(entry.path.stem), style="bold")
            if entry.error:
                label.append(f"  {clean(entry.error)}", style="red")
            else:
                label.append(f"  {entry.turns} turns  {clean(_short_date(entry.last_date))}", style="dim")
                if entry.bad_lines:
                    s = "s" if entry.bad_lines != 1 else ""
                    label.append(f"  {entry.bad_lines} unreadable line{s}: opening keeps the rest",
                                 style="yellow")
                if entry.preview:
                    label.append("\n  " + clean(entry.preview[:120]), style="italic")
            # An unreadable chat stays selectable: opening it says why, and sets the file aside.
            options.append(Option(label, id=f"chat-{i}"))
        with Vertical():
            keys = "Enter exports" if self._export else "Enter opens, b branches, x exports, n new"
            yield Static(f"Chats with {clean(self._character)}  ({keys}, Esc closes)", id="chats-title", markup=False)
            yield OptionList(*options, id="chats")
        yield Footer()

    def on_mount(self) -> None:
        chats = self.query_one(OptionList)
        # Start on a chat, never on "Start a new chat": the one used last, else the newest.
        paths = [entry.path for entry in self._chats]
        chats.highlighted = (paths.index(self._last) + 1 if self._last in paths else 1) if paths else 0
        chats.focus()

    def _selected(self) -> Path | None:
        option_list = self.query_one(OptionList)
        index = option_list.highlighted
        if index is None or index == 0:
            return None
        return self._chats[index - 1].path

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        path = self._selected()
        if self._export:
            self.action_export()
            return
        self.dismiss(("open", path) if path is not None else ("new", None))

    def action_export(self) -> None:
        path = self._selected()
        if path is None:
            self.notify("Pick a chat to export.", severity="warning")
            return
        self.dismiss(("export", path))

    def action_branch(self) -> None:
        path = self._selected()
        if path is None:
            self.notify("Pick a chat to branch.", severity="warning")
            return
        self.dismiss(("branch", path))

    def action_new(self) -> None:
        self.dismiss(("new", None))

    def action_cancel(self) -> None:
        self.dismiss(None)


class LibraryScreen(Screen[None]):
    """All cards (bundled and the user's); the first screen."""

    BINDINGS: ClassVar[list[BindingType]] = bindings_for("library")
    SCOPES = ("library",)
    AUTO_FOCUS = "#filter"


    def __init__(self) -> None:
        super().__init__()
        self.entries: list[CardEntry] = []
        self.shown: list[CardEntry] = []
        self._files: list[tuple[Path, int]] = []

    @property
    def host(self) -> Host:
        return host_of(self)

    def compose(self) -> ComposeResult:
        yield Static("rpchat  \u2014  character library", id="title", markup=False)
        yield Input(placeholder="Type to filter by name, tag or notes", id="filter")
        with Horizontal():
            yield OptionList(id="cards")
            with VerticalScroll(id="detail"):
                yield AvatarView(None)
                yield Static("", id="card-name", markup=False)
                yield Static("", id="card-tags", markup=False)
                yield Static("", id="card-notes", markup=False)
                yield Static("", id="card-chats", markup=False)
        with Horizontal(id="model-bar"):
            yield Static("", id="model-text", markup=False)
            yield ProgressBar(total=100, show_eta=False, show_percentage=True, id="model-progress")
        yield Footer()

    def on_mount(self) -> None:
        self.reload()
        self.query_one("#filter", Input).focus()
        self.watch(self.app, "engine_state", lambda _: self._show_model())
        self.watch(self.app, "load_progress", lambda _: self._show_model())

    def on_screen_resume(self) -> None:
        # Chats may have been added, and the card edited or renamed, while the chat screen was open.

        if self._files == self._card_files():
            self._show_detail()  # no card changed: only the chat count may have
            return
        current = self.current
        select = current.path if current is not None and current.path.exists() else None
        if select is None and current is not None:
            last = recorded_chat(self.host.paths)  # a card renamed from its chat: follow it
            select = last.card if last is not None else None
            if select is not None:
                self.query_one("#filter", Input).value = ""  # the new name may not match the filter
        self.reload(select=select)

    @staticmethod
    def _card_files() -> list[tuple[Path, int]]:
        """The card files and their change times: reading every card again is only worth it on a change."""
        found = []
        for path in card_files():
            try:
                found.append((path, path.stat().st_mtime_ns))
            except OSError:
                found.append((path, 0))
        return found

    # --- list ----------------------------------------------------------------------------------------
    def reload(self, select: Path | None = None) -> None:
        """Read the card folders again and show the list (keeping the filter)."""
        self._files = self._card_files()
        try:
            self.entries = list_cards()
        except RpchatError as e:
            self.entries = []
            self.notify(str(e), severity="error", markup=False)
        self._apply_filter(select)

    def _apply_filter(self, select: Path | None = None) -> None:
        query = self.query_one("#filter", Input).value
        if select is None and self.current is not None:
            select = self.current.path  # the cursor stays on its card while that card is shown
        self.shown = [e for e in self.entries if entry_matches(e, query)]
        cards = self.query_one("#cards", OptionList)
        cards.clear_options()
        cards.add_options([Option(entry_label(e)) for e in self.shown])
        index = 0
        if select is not None:
            index = next((i for i, e in enumerate(self.shown) if e.path == select), 0)
        cards.highlighted = index if self.shown else None
        self._show_detail()

    @on(Input.Changed, "#filter")
    def _filter_changed(self) -> None:
        self._apply_filter()

    @on(OptionList.OptionHighlighted, "#cards")
    def _highlighted(self) -> None:
        self._show_detail()

    @on(OptionList.OptionSelected, "#cards")
    def _selected(self) -> None:
        self.action_open_card()

    @property
    def current(self) -> CardEntry | None:
        index = self.query_one("#cards", OptionList).highlighted
        if index is None or not 0 <= index < len(self.shown):
            return None
        return self.shown[index]

    def _show_detail(self) -> None:
        entry = self.current
        avatar = self.query_one(AvatarView)
        name = self.query_one("#card-name", Static)
        tags = self.query_one("#card-tags", Static)
        notes = self.query_one("#card-notes", Static)
        chats = self.query_one("#card-chats", Static)
        if entry is None:
            avatar.set_image(None)
            name.update("No cards match." if self.entries else "No cards yet: import one (Ctrl+T).")
            for w in (tags, notes, chats):
                w.update("")
            return
        data = None
        if not entry.error:
            try:
                data = load_card(entry.path).avatar
            except RpchatError:
                data = None
        avatar.set_image(data)
        name.update(clean(entry.name))
        tags.update(clean(", ".join(entry.tags)) if entry.tags else "")
        notes.update(clean(entry.error or entry.creator_notes or ""))
        chats.update(self._chats_line(entry))

    def _chats_line(self, entry: CardEntry) -> str:
        # Runs on every highlight: count the chat files, never parse them (a card may have many big chats).
        try:
            count = count_chats(entry.path, entry.name)
        except (RpchatError, OSError):
            count = 0
        resume, new = self.host.key_for("resume_chat"), self.host.key_for("new_chat")
        if count:
            return (f"{count} chat{'s' if count != 1 else ''}: Enter lists them, {new} starts new, "
                    f"{resume} resumes your last chat")
        return f"No chats yet: Enter or {new} starts one"

    def _show_model(self) -> None:
        """The model bar: loading progress, ready, or the problem."""
        app = self.host
        text = self.query_one("#model-text", Static)
        bar = self.query_one("#model-progress", ProgressBar)
        if app.engine_state == "loading":
            text.update("Loading the model... (you can browse meanwhile)")
            bar.display = True
            bar.update(progress=int(app.load_progress * 100))
            return
        bar.display = False
        if app.engine_state == "ready" and app.engine_info is not None:
            info = app.engine_info
            text.update(clean(f"Model: {info.model_name} | {info.backend} | n_ctx {info.n_ctx:,}"))
        elif app.engine_problem:
            text.update(clean(app.engine_problem))
        else:
            text.update("No model loaded")

    # --- actions ---------------------------------------------------------------------------------------
    def action_move(self, step: int) -> None:
        cards = self.query_one("#cards", OptionList)
        if not self.shown:
            return
        current = cards.highlighted if cards.highlighted is not None else -1
        cards.highlighted = max(0, min(len(self.shown) - 1, current + step))

    def action_focus_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def _usable(self) -> CardEntry | None:
        entry = self.current
        if entry is None:
            self.notify("No card selected.", severity="warning")
            return None
        if entry.error:
            self.notify(f"{entry.path}: {entry.error}", severity="error", markup=False)
            return None
        return entry

    def action_open_card(self) -> None:
        entry = self._usable()
        if entry is None:
            return
        try:
            chats = list_chats(entry.path, entry.name)
        except (RpchatError, OSError) as e:
            self.notify(str(e), severity="error", markup=False)
            return
        if not chats:
            self.host.open_chat(entry.path, None)
            return

        def chosen(choice: tuple[str, Path | None] | None) -> None:
            if choice is None:
                return
            what, path = choice
            if what == "branch" and path is not None:
                self.host.open_chat(entry.path, path, branch=True)
            elif what == "export" and path is not None:
                self._export_chat(path)
            else:
                self.host.open_chat(entry.path, path)


        last = recorded_chat(self.host.paths)
        self.app.push_screen(ChatsDialog(entry.name, chats, last.chat if last else None), chosen)

    def action_resume_chat(self) -> None:
        """Open the chat used last (remembered across restarts); without one, the card's newest chat."""
        last = last_chat(self.host.paths)
        if last is not None:
            if last.card.parent == groups_dir(self.host.paths.data_dir):
                self.host.open_group(last.card)  # the group goes on in the chat used last
            else:
                self.host.open_chat(last.card, last.chat)
            return
        gone = recorded_chat(self.host.paths)
        entry = self._usable()
        newest = latest_chat(entry.path, entry.name) if entry is not None else None
        if gone is not None:
            then = ("resuming this card's newest chat" if newest is not None or entry is None
                    else f"starting a new chat with {entry.name}")
            self.notify(f"Your last chat {gone.chat.name} is gone; {then}.", severity="warning", markup=False)
        if entry is not None:
            self.host.open_chat(entry.path, newest)

    def action_groups(self) -> None:
        """Group chats: open one, or make one from two or more cards."""
        entry = self.current if self.current is not None and not self.current.error else None

        def made(path: Path | None) -> None:
            if path is not None:
                self.host.open_group(path)

        def chosen(choice: Path | str | tuple[str, Path] | None) -> None:
            if choice == "new":
                self.app.push_screen(NewGroupDialog(entry.path if entry is not None else None), made)
            elif isinstance(choice, Path):
                self.host.open_group(choice)
            elif isinstance(choice, tuple):
                self.host.open_group(choice[1], new_chat=True)

        self.app.push_screen(GroupsDialog(), chosen)

    def action_new_chat(self) -> None:
        entry = self._usable()
        if entry is not None:
            self.host.open_chat(entry.path, None)

    def action_import_card(self) -> None:
        def chosen(path: Path | None) -> None:
            if path is None:
                return
            try:
                dest = import_card(path)
            except RpchatError as e:
                self.notify(str(e), severity="error", markup=False)
                return
            self.query_one("#filter", Input).value = ""
            self.reload(select=dest)
            self.notify(f"Imported {dest.name}", markup=False)

        self.app.push_screen(PathPrompt("Import a card (PNG, JSON or CharX)", suffixes=CARD_SUFFIXES), chosen)

    def action_new_card(self) -> None:
        edit_card(self, None, self._card_saved)

    def action_edit_card(self) -> None:
        entry = self._usable()
        if entry is not None:
            edit_card(self, entry.path, self._card_saved)

    def _card_saved(self, saved: SavedCard) -> None:
        # Show the saved card in the list (its name may not match the filter).
        self.query_one("#filter", Input).value = ""
        self.reload(select=saved.path)

    def action_duplicate_card(self) -> None:
        entry = self._usable()
        if entry is None:
            return
        try:
            dest = duplicate_card(entry.path)
        except RpchatError as e:
            self.notify(str(e), severity="error", markup=False)
            return
        self.reload(select=dest)
        self.notify(f"Duplicated as {dest.name}", markup=False)

    def action_delete_card(self) -> None:
        entry = self.current
        if entry is None:
            return
        if entry.bundled:
            self.notify("Bundled cards cannot be deleted (duplicate one to make it yours).", severity="warning")
            return

        def confirmed(yes: bool | None) -> None:
            if not yes:
                return
            try:
                delete_card(entry.path)
            except RpchatError as e:
                self.notify(str(e), severity="error", markup=False)
                return
            self.reload()
            self.notify(f"Deleted {entry.path.name}", markup=False)

        self.app.push_screen(
            ConfirmDialog(f"Delete the card {entry.name} ({entry.path.name})? Its chats are kept.",
                          title="Delete card", yes="Delete", danger=True),
            confirmed,
        )

    # --- import / export (what `rpchat chat import|export` and `rpchat card convert` do) ---------------
    def action_import_chat(self) -> None:
        """Copy a SillyTavern chat into the selected card's chats."""
        entry = self._usable()
        if entry is None:
            return

        def chosen(path: Path | None) -> None:
            if path is None:
                return
            try:
                dest = import_st_chat(path, profile().chats_dir, character=entry.name,
                                      folder=chats_folder(entry.path))
            except RpchatError as e:
                self.notify(str(e), severity="error", markup=False)
                return
            self._show_detail()
            self.notify(f"Imported {dest.name} into the chats of {entry.name} (Enter lists them)", markup=False)

        self.app.push_screen(PathPrompt(f"Import a chat for {clean(entry.name)}", suffixes=(".jsonl",),
                                        message="A SillyTavern chat (.jsonl); a copy joins this card's chats."),
                             chosen)

    def action_export_chat(self) -> None:
        """Pick one of the selected card's chats and write it as a SillyTavern chat."""
        entry = self._usable()
        if entry is None:
            return
        try:
            chats = list_chats(entry.path, entry.name)
        except RpchatError as e:
            self.notify(str(e), severity="error", markup=False)
            return
        if not chats:
            self.notify(f"No chats with {entry.name} yet.", severity="warning", markup=False)
            return

        def chosen(choice: tuple[str, Path | None] | None) -> None:
            if choice is not None and choice[1] is not None:
                self._export_chat(choice[1])

        self.app.push_screen(ChatsDialog(entry.name, chats, export=True), chosen)

    def _export_chat(self, path: Path) -> None:
        save_to_path(self, "Export the chat as SillyTavern .jsonl", lambda dest: export_st_chat(load_chat(path), dest),
                     value=str(Path.cwd() / path.name), suffixes=(".jsonl",),
                     message=f"{path.name}, without rpchat's own settings, as SillyTavern reads it.")

    def action_export_card(self) -> None:
        """Save the selected card as .png, .json or .charx (converting as needed)."""
        entry = self._usable()
        if entry is None:
            return
        source = entry.path

        def write(dest: Path) -> None:
            save_card(load_card(source), dest)

        save_to_path(self, f"Export {clean(entry.name)}", write, value=str(Path.cwd() / source.name),
                     suffixes=CARD_SUFFIXES,
                     message="The extension picks the format: .png (with the avatar), .json or .charx.")
