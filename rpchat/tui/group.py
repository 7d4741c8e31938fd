"""Group chats in the TUI: pick or make a group (library), pick who speaks (chat), manage the members.

The dialogs work on the core (`rpchat.group`); the chat screen drives the turns through `GroupTurns`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, OptionList, SelectionList, Static
from textual.widgets.option_list import Option

from rpchat.errors import RpchatError
from rpchat.group.library import GroupEntry, card_by_file, create_group, list_groups
from rpchat.group.model import STRATEGIES
from rpchat.group.turns import Member
from rpchat.tui.prose import clean

if TYPE_CHECKING:
    from rpchat.group.session import GroupSession

_DIALOG_CSS = """
{name} {{ align: center middle; }}
{name} > Vertical {{ width: 80; max-width: 95%; height: auto; max-height: 85%; border: thick $primary 60%;
                     background: $surface; padding: 0 1; }}
{name} .title {{ text-style: bold; color: $primary; }}
{name} OptionList, {name} SelectionList {{ height: auto; max-height: 20; }}
"""


class GroupsDialog(ModalScreen["Path | str | tuple[str, Path] | None"]):
    """The groups: open one's current chat (Enter), start a new chat of one (c), or make a new group (n).

    Dismisses with the group's file, ("new chat", file), "new" or None.
    """

    DEFAULT_CSS = _DIALOG_CSS.format(name="GroupsDialog")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Close", id="groups.close"),
        Binding("n", "new", "New group", id="groups.new"),
        Binding("c", "new_chat", "New chat", id="groups.new_chat"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._groups: list[GroupEntry] = list_groups()

    def compose(self) -> ComposeResult:
        options = [Option(Text("+ New group", style="bold"), id="new")]
        for i, entry in enumerate(self._groups):
            label = Text(clean(entry.name), style="bold")
            if entry.group is None:
                label.append(f"  {clean(entry.error or '')}", style="red")
            else:
                g = entry.group
                label.append(f"  {len(g.members)} members, {g.strategy_name}, {len(g.chats)} chat(s)", style="dim")
            options.append(Option(label, id=f"group-{i}", disabled=entry.group is None))
        with Vertical():
            yield Static("Group chats  (Enter opens the current chat, c starts a new one, n new group, Esc closes)",
                         classes="title", markup=False)
            yield OptionList(*options, id="groups")
        yield Footer()

    def on_mount(self) -> None:
        groups = self.query_one(OptionList)
        groups.highlighted = 1 if self._groups else 0
        groups.focus()

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        index = event.option_index
        self.dismiss("new" if index == 0 else self._groups[index - 1].path)

    def action_new(self) -> None:
        self.dismiss("new")

    def action_new_chat(self) -> None:
        index = self.query_one(OptionList).highlighted
        if index:
            self.dismiss(("new chat", self._groups[index - 1].path))

    def action_cancel(self) -> None:
        self.dismiss(None)


class NewGroupDialog(ModalScreen["Path | None"]):
    """Name a group and tick two or more cards; Ctrl+S (or Enter in the name) makes it. Dismisses with its file."""

    DEFAULT_CSS = _DIALOG_CSS.format(name="NewGroupDialog")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="new_group.cancel"),
        Binding("ctrl+s", "create", "Create", id="new_group.create", priority=True),
    ]

    def __init__(self, preselect: Path | None = None) -> None:
        super().__init__()
        from rpchat.cards.library import list_cards

        self._cards = [e for e in list_cards() if e.error is None]
        self._preselect = preselect

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("New group: a name, then Space ticks two or more cards; Ctrl+S creates",
                         classes="title", markup=False)
            yield Input(placeholder="Group name (e.g. Gull Island)", id="group-name")
            # The card selected in the library is ticked already.
            yield SelectionList[int](*[(Text(clean(e.name)), i, e.path == self._preselect)
                                       for i, e in enumerate(self._cards)], id="group-cards")
            yield Static("", id="group-picked", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#group-name", Input).focus()
        self._show_picked()

    @on(SelectionList.SelectedChanged)
    def _show_picked(self) -> None:
        # The ticks differ only by colour; say in words which cards are in.
        names = [clean(self._cards[i].name) for i in self.query_one(SelectionList).selected]
        self.query_one("#group-picked", Static).update(f"Members: {', '.join(names) or 'none yet'}")

    @on(Input.Submitted, "#group-name")
    def _name_done(self, event: Input.Submitted) -> None:
        event.stop()
        if len(self.query_one(SelectionList).selected) >= 2:
            self.action_create()
        else:
            self.query_one(SelectionList).focus()

    def action_create(self) -> None:
        name = self.query_one("#group-name", Input).value
        picked = [self._cards[i].path for i in self.query_one(SelectionList).selected]
        try:
            _, path = create_group(name, picked)
        except RpchatError as e:
            self.notify(str(e), severity="error", markup=False)
            return
        self.dismiss(path)

    def action_cancel(self) -> None:
        self.dismiss(None)


class SpeakerDialog(ModalScreen["Member | str | None"]):
    """Who speaks now: a member (muted ones too), or "pass" (the group's turn order answers)."""

    DEFAULT_CSS = _DIALOG_CSS.format(name="SpeakerDialog")
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Close", id="speaker.close")]

    def __init__(self, session: GroupSession) -> None:
        super().__init__()
        self._session = session

    def compose(self) -> ComposeResult:
        s = self._session
        order = s.group.strategy_name
        options = []
        if order != "manual":
            options.append(Option(Text(f"Pass my turn: the group answers ({order})", style="bold"), id="pass"))
        for m in s.members:
            label = Text(clean(m.name), style="bold")
            label.append(f"  talkativeness {m.talkativeness:g}" + ("  muted" if s.is_muted(m) else ""), style="dim")
            options.append(Option(label, id=f"m-{m.avatar}"))
        with Vertical():
            yield Static("Who speaks now?  (Enter picks, Esc closes)", classes="title", markup=False)
            yield OptionList(*options, id="speakers")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        key = event.option.id or ""
        if key == "pass":
            self.dismiss("pass")
            return
        self.dismiss(next(m for m in self._session.members if f"m-{m.avatar}" == key))

    def action_cancel(self) -> None:
        self.dismiss(None)


class MembersDialog(ModalScreen[bool]):
    """The group's members: m mutes or unmutes, x removes, a adds a card, o changes the turn order.

    Every change is saved at once (in the group file); dismisses with whether anything changed.
    """

    DEFAULT_CSS = _DIALOG_CSS.format(name="MembersDialog")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close", id="members.close"),
        Binding("m", "mute", "Mute/unmute", id="members.mute"),
        Binding("x,delete", "remove", "Remove", id="members.remove"),
        Binding("a", "add", "Add card", id="members.add"),
        Binding("o", "order", "Turn order", id="members.order"),
    ]

    def __init__(self, session: GroupSession) -> None:
        super().__init__()
        self._session = session
        self._changed = False

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("", id="members-title", classes="title", markup=False)
            yield OptionList(id="members")
        yield Footer()

    def on_mount(self) -> None:
        self._fill()
        self.query_one(OptionList).focus()

    def _fill(self) -> None:
        s = self._session
        self.query_one("#members-title", Static).update(
            f"{clean(s.group.name)}: turn order {s.group.strategy_name}  (m mute, x remove, a add, o order)")
        members = self.query_one(OptionList)
        at = members.highlighted or 0
        members.clear_options()
        for m in s.members:
            label = Text(clean(m.name), style="bold")
            label.append(f"  {clean(m.avatar)}" + ("  muted" if s.is_muted(m) else ""), style="dim")
            members.add_option(Option(label, id=f"m-{m.avatar}"))
        members.highlighted = min(at, len(s.members) - 1) if s.members else None

    def _selected(self) -> Member | None:
        index = self.query_one(OptionList).highlighted
        return self._session.members[index] if index is not None and index < len(self._session.members) else None

    def _do(self, change: Any) -> None:
        try:
            change()
        except RpchatError as e:
            self.notify(str(e), severity="error", markup=False)
            return
        self._changed = True
        self._fill()

    def action_mute(self) -> None:
        m = self._selected()
        if m is not None:
            self._do(lambda: self._session.set_muted(m, not self._session.is_muted(m)))

    def action_remove(self) -> None:
        m = self._selected()
        if m is not None:
            self._do(lambda: self._session.remove_member(m))

    def action_order(self) -> None:
        names = list(STRATEGIES)
        now = self._session.group.strategy_name
        self._do(lambda: self._session.set_strategy(names[(names.index(now) + 1) % len(names)]))

    def action_add(self) -> None:
        from rpchat.cards.library import list_cards

        inside = set(self._session.group.members)
        cards = [e for e in list_cards() if e.error is None and e.path.name not in inside]
        if not cards:
            self.notify("Every card in the library is in this group already.", severity="warning")
            return

        def picked(path: Path | None) -> None:
            if path is not None:
                self._do(lambda: self._session.add_member(str(path)))

        self.app.push_screen(CardPickDialog(cards), picked)

    def action_close(self) -> None:
        self.dismiss(self._changed)


class CardPickDialog(ModalScreen["Path | None"]):
    """Pick one library card (to add to a group)."""

    DEFAULT_CSS = _DIALOG_CSS.format(name="CardPickDialog")
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", id="card_pick.cancel")]

    def __init__(self, cards: list[Any]) -> None:
        super().__init__()
        self._cards = cards

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Add which card?  (Enter adds, Esc cancels)", classes="title", markup=False)
            yield OptionList(*[Option(Text(clean(e.name))) for e in self._cards])
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(self._cards[event.option_index].path)

    def action_cancel(self) -> None:
        self.dismiss(None)


class GroupTurns:
    """The chat screen's queue of group speakers: who answers the user's message, one after another."""

    def __init__(self, session: GroupSession) -> None:
        self.session = session
        self.queue: list[Member] = []

    def start_round(self) -> bool:
        """Line up who answers now by the group's turn order; False when nobody would (manual turns)."""
        self.queue = self.session.next_speakers()
        return bool(self.queue)

    def take(self) -> Member | None:
        """The next speaker of the round, made the session's speaker; None when the round is over."""
        if not self.queue:
            return None
        member = self.queue.pop(0)
        self.session.speak_as(member)
        return member

    def cancel(self) -> None:
        self.queue = []

    def speaker_card(self) -> Path | None:
        """The card file of the member who speaks now (F4 edits it)."""
        return card_by_file(self.session.speaker.avatar)

    def reload(self, edited: Path) -> None:
        """Read the group and its members' cards again after ``edited`` was saved (a rename changed the
        group file and the chat's messages: `rpchat.group.library.rename_member`)."""
        self.session.reload_group()
        s = self.session
        s.speak_as(next((m for m in s.members if m.avatar == edited.name), s.members[0]))


def avatars_of(session: GroupSession) -> dict[str, bytes]:
    """Each member's picture by card file name (what a message's ``original_avatar`` names)."""
    return {m.avatar: m.card.avatar for m in session.members if m.card.avatar}


def members_line(session: GroupSession) -> str:
    """The sidebar's list of members: who speaks next is marked, muted ones say so."""
    lines = [f"Group: {session.group.name} ({session.group.strategy_name})"]
    for m in session.members:
        mark = "\u25b8 " if m is session.speaker else "  "
        lines.append(f"{mark}{m.name}" + (" (muted)" if session.is_muted(m) else ""))
    return clean("\n".join(lines))
