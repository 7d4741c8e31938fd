"""Group chats in the TUI: pick or make a group (library), pick who speaks (chat), manage the members.

The dialogs work on the core (`rpchat.group`); the chat screen drives the turns through `GroupTurns`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Vertical
from textual.widgets import Footer, Input, OptionList, SelectionList, Static
from textual.widgets.option_list import Option

from rpchat.cards.library import list_cards
from rpchat.errors import RpchatError
from rpchat.group.cast import GroupCast
from rpchat.group.library import GroupEntry, card_by_file, create_group, list_groups
from rpchat.group.model import STRATEGIES
from rpchat.group.turns import Member
from rpchat.session import RoleplaySession
from rpchat.tui.bindings import bindings_for
from rpchat.tui.dialogs import Dialog
from rpchat.tui.prose import clean


def _cast(session: RoleplaySession) -> GroupCast:
    assert session.cast is not None  # these dialogs open in group chats only
    return session.cast


class GroupsDialog(Dialog["Path | str | tuple[str, Path] | None"]):
    """The groups: open one's current chat (Enter), start a new chat of one (c), or make a new group (n).

    Dismisses with the group's file, ("new chat", file), "new" or None.
    """

    BINDINGS: ClassVar[list[BindingType]] = bindings_for("groups")

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
                         classes="dialog-title", markup=False)
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


class NewGroupDialog(Dialog["Path | None"]):
    """Name a group and tick two or more cards; Ctrl+S (or Enter in the name) makes it. Dismisses with its file."""

    BINDINGS: ClassVar[list[BindingType]] = bindings_for("new_group")

    def __init__(self, preselect: Path | None = None) -> None:
        super().__init__()
        self._cards = [e for e in list_cards() if e.error is None]
        self._preselect = preselect

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("New group: a name, then Space ticks two or more cards; Ctrl+S creates",
                         classes="dialog-title", markup=False)
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


class SpeakerDialog(Dialog["Member | str | None"]):
    """Who speaks now: a member (muted ones too), or "pass" (the group's turn order answers)."""

    BINDINGS: ClassVar[list[BindingType]] = bindings_for("speaker")

    def __init__(self, session: RoleplaySession) -> None:
        super().__init__()
        self._session = session
        self._cast = _cast(session)

    def compose(self) -> ComposeResult:
        s = self._cast
        order = s.group.strategy_name
        options = []
        if order != "manual":
            options.append(Option(Text(f"Pass my turn: the group answers ({order})", style="bold"), id="pass"))
        for m in s.members:
            label = Text(clean(m.name), style="bold")
            label.append(f"  talkativeness {m.talkativeness:g}" + ("  muted" if s.is_muted(m) else ""), style="dim")
            options.append(Option(label, id=f"m-{m.avatar}"))
        with Vertical():
            yield Static("Who speaks now?  (Enter picks, Esc closes)", classes="dialog-title", markup=False)
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
        self.dismiss(next(m for m in self._cast.members if f"m-{m.avatar}" == key))

    def action_cancel(self) -> None:
        self.dismiss(None)


class MembersDialog(Dialog[bool]):
    """The group's members: m mutes or unmutes, x removes, a adds a card, o changes the turn order.

    Every change is saved at once (in the group file); dismisses with whether anything changed.
    """

    BINDINGS: ClassVar[list[BindingType]] = bindings_for("members")

    def __init__(self, session: RoleplaySession) -> None:
        super().__init__()
        self._session = session
        self._cast = _cast(session)
        self._changed = False

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("", id="members-title", classes="dialog-title", markup=False)
            yield OptionList(id="members")
        yield Footer()

    def on_mount(self) -> None:
        self._fill()
        self.query_one(OptionList).focus()

    def _fill(self) -> None:
        s = self._cast
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
        members = self._cast.members
        return members[index] if index is not None and index < len(members) else None

    def _do(self, change: Any) -> None:
        # Through the session's one mutation mechanism: saved in the group file, or put back.
        try:
            with self._session.change():
                change(self._cast)
        except RpchatError as e:
            self.notify(str(e), severity="error", markup=False)
            return
        self._changed = True
        self._fill()

    def action_mute(self) -> None:
        m = self._selected()
        if m is not None:
            self._do(lambda cast: cast.set_muted(m, not cast.is_muted(m)))

    def action_remove(self) -> None:
        m = self._selected()
        if m is not None:
            self._do(lambda cast: cast.remove_member(m))

    def action_order(self) -> None:
        names = list(STRATEGIES)
        now = self._cast.group.strategy_name
        self._do(lambda cast: cast.set_strategy(names[(names.index(now) + 1) % len(names)]))

    def action_add(self) -> None:
        inside = set(self._cast.group.members)
        cards = [e for e in list_cards() if e.error is None and e.path.name not in inside]
        if not cards:
            self.notify("Every card in the library is in this group already.", severity="warning")
            return

        def picked(path: Path | None) -> None:
            if path is not None:
                self._do(lambda cast: cast.add_member(str(path)))

        self.app.push_screen(CardPickDialog(cards), picked)

    def action_close(self) -> None:
        self.dismiss(self._changed)


class CardPickDialog(Dialog["Path | None"]):
    """Pick one library card (to add to a group)."""

    BINDINGS: ClassVar[list[BindingType]] = bindings_for("card_pick")

    def __init__(self, cards: list[Any]) -> None:
        super().__init__()
        self._cards = cards

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Add which card?  (Enter adds, Esc cancels)", classes="dialog-title", markup=False)
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

    def __init__(self, session: RoleplaySession) -> None:
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
        return self.session.speak_as(self.queue.pop(0))

    def cancel(self) -> None:
        self.queue = []

    def speaker_card(self) -> Path | None:
        """The card file of the member who speaks now (F4 edits it)."""
        return card_by_file(_cast(self.session).speaker.avatar)

    def reload(self, edited: Path) -> None:
        """Read the group and its members' cards again after ``edited`` was saved (a rename changed the group
        file and the chat's messages: `rpchat.group.library.rename_member`)."""
        cast = _cast(self.session)
        cast.reload()
        self.session.reload_chat()
        self.session.speak_as(next((m for m in cast.members if m.avatar == edited.name), cast.speaker))


def avatars_of(session: RoleplaySession) -> dict[str, bytes]:
    """Each member's picture by card file name (what a message's ``original_avatar`` names)."""
    return {m.avatar: m.card.avatar for m in _cast(session).members if m.card.avatar}


def members_line(session: RoleplaySession) -> str:
    """The sidebar's list of members: who speaks next is marked, muted ones say so."""
    cast = _cast(session)
    lines = [f"Group: {cast.group.name} ({cast.group.strategy_name})"]
    for m in cast.members:
        mark = "\u25b8 " if m is cast.speaker else "  "
        lines.append(f"{mark}{m.name}" + (" (muted)" if cast.is_muted(m) else ""))
    return clean("\n".join(lines))
