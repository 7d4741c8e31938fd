"""Group chats in the app, driven by Pilot with the real engine on the tiny model: make a group in the
library, send and pass turns, pick a speaker, swipe a member's message, mute a member."""

from __future__ import annotations

import asyncio
from pathlib import Path

from session_support import make_card, wait_for
from textual.widgets import OptionList, SelectionList

from rpchat.chat.store import load_chat
from rpchat.group.library import find_group
from rpchat.group.model import load_group
from rpchat.paths import profile
from rpchat.tui.app import RpchatApp
from rpchat.tui.chat import ChatScreen
from rpchat.tui.group import GroupsDialog, MembersDialog, NewGroupDialog, SpeakerDialog

NAME = "Marisol"


def _second_card() -> None:
    make_card(profile().cards_dir, "Oskar", description="{{char}} rows the ferry.",
              first_mes="*Oskar waves from his boat.*", alternate_greetings=[])


async def _make_group(pilot, app: RpchatApp) -> ChatScreen:  # type: ignore[no-untyped-def]
    await wait_for(pilot, lambda: type(app.screen).__name__ == "LibraryScreen")
    await pilot.press("ctrl+g")
    await wait_for(pilot, lambda: isinstance(app.screen, GroupsDialog))
    await pilot.press("n")
    await wait_for(pilot, lambda: isinstance(app.screen, NewGroupDialog))
    await pilot.press(*"Island")
    cards = app.screen.query_one(SelectionList)
    names = [str(cards.get_option_at_index(i).prompt) for i in range(cards.option_count)]
    cards.deselect_all()  # the card highlighted in the library comes ticked
    for wanted in ("Marisol", "Oskar"):
        cards.select(cards.get_option_at_index(names.index(wanted)))
    await pilot.press("ctrl+s")
    await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
    await wait_for(pilot, lambda: app.engine_state == "ready")
    return app.screen  # type: ignore[return-value]


def _chat():  # type: ignore[no-untyped-def]
    return load_chat(profile().data_dir / "group chats" / f"{load_group(find_group('Island')).chat_id}.jsonl")


def test_group_flow_in_the_app(home: Path) -> None:
    _second_card()

    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(130, 44)) as pilot:
            screen = await _make_group(pilot, app)
            assert [v.avatar is not None for v in screen.turn_views()] == [True, True]
            assert "Group: Island (natural)" in str(screen.query_one("#group-members").render())
            # Round-robin: both answer a message, one after the other, each with its picture.
            app.screen.action_group_members()
            await wait_for(pilot, lambda: isinstance(app.screen, MembersDialog))
            await pilot.press("o")
            assert load_group(find_group("Island")).strategy_name == "round-robin"
            await pilot.press("escape")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            screen.input.text = "Hello both"
            await pilot.press("enter")
            await pilot.pause()
            await wait_for(pilot, lambda: not screen.generating and len(_chat().turns) == 5)
            assert [t.name for t in _chat().turns[-3:]] == ["User", "Marisol", "Oskar"]
            assert screen.turn_views()[-1].avatar is not None
            # Manual: a message waits; Ctrl+K picks Oskar.
            with screen.session.change():
                screen.session.cast.set_strategy("manual")
            screen.input.text = "Oskar?"
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, SpeakerDialog))
            options = app.screen.query_one(OptionList)
            labels = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
            options.highlighted = next(i for i, label in enumerate(labels) if label.startswith("Oskar"))
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            await wait_for(pilot, lambda: not screen.generating and len(_chat().turns) == 7)
            assert [t.name for t in _chat().turns[-2:]] == ["User", "Oskar"]
            # A swipe on Oskar's message regenerates as Oskar, even with Marisol picked last time.
            screen.session.speak_as("Marisol")
            screen.action_swipe(1)
            await pilot.pause()
            await wait_for(pilot, lambda: not screen.generating)
            last = _chat().turns[-1]
            assert (last.name, len(last.swipes)) == ("Oskar", 2)
            assert screen.session.last_built.text.endswith("Oskar:")  # type: ignore[union-attr]
            # Pass the turn (empty Enter) in natural order: someone answers; Oskar spoke last, so Marisol does.
            with screen.session.change():
                screen.session.cast.set_strategy("natural")
            screen.input.focus()
            await pilot.press("enter")
            await pilot.pause()
            await wait_for(pilot, lambda: not screen.generating and len(_chat().turns) >= 8)
            assert _chat().turns[7].name == "Marisol"

    asyncio.run(go())


def test_with_every_member_muted_passing_the_turn_says_so_instead_of_asking_again(home: Path) -> None:
    _second_card()

    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(130, 44)) as pilot:
            screen = await _make_group(pilot, app)
            cast = screen.session.cast
            assert cast is not None
            with screen.session.change():
                for member in list(cast.members):
                    cast.set_muted(member, True)
            before = len(_chat().turns)
            screen.input.focus()
            await pilot.press("enter")  # an empty Enter passes the turn: nobody can answer
            await pilot.pause()
            await wait_for(pilot, lambda: any("Every member is muted" in str(n.message)
                                              for n in app._notifications))
            assert isinstance(app.screen, ChatScreen)  # no "who speaks now?" dialog that only loops
            assert len(_chat().turns) == before

    asyncio.run(go())
