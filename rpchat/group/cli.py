"""`rpchat group ...`: make and change groups, import and export them as SillyTavern files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rpchat.errors import RpchatError
from rpchat.group.model import STRATEGIES, load_group
from rpchat.text import strip_controls


class UsageError(RpchatError):
    """A command line that asks for something impossible (e.g. a group and a card at once)."""


def add_parser(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """The `group` command and its subcommands."""
    gp = sub.add_parser("group", help="group chats: several characters in one chat")
    gps = gp.add_subparsers(dest="group_command", required=True, parser_class=parser_class)
    new = gps.add_parser("new", help="make a group of two or more cards (library names or card files)")
    new.add_argument("name")
    new.add_argument("cards", nargs="+", metavar="CARD")
    new.add_argument("--order", choices=list(STRATEGIES), default="natural", help="who speaks next")
    gps.add_parser("list", help="list the groups")
    show = gps.add_parser("show", help="print a group's members, turn order and chats")
    show.add_argument("name")
    add = gps.add_parser("add", help="add a card to a group")
    add.add_argument("name")
    add.add_argument("card")
    for verb, what in (("remove", "take a member out of a group"), ("mute", "stop a member from speaking"),
                       ("unmute", "let a muted member speak again")):
        p = gps.add_parser(verb, help=what)
        p.add_argument("name")
        p.add_argument("member")
    order = gps.add_parser("order", help="set who speaks next: natural, round-robin or manual")
    order.add_argument("name")
    order.add_argument("order", choices=list(STRATEGIES))
    imp = gps.add_parser("import", help="copy a SillyTavern group (groups/<id>.json or a data folder) and its chats")
    imp.add_argument("src", type=Path)
    exp = gps.add_parser("export", help="write a group and its chats as a SillyTavern data folder layout")
    exp.add_argument("name")
    exp.add_argument("dest", type=Path)
    exp.add_argument("--cards", action="store_true", help="also copy the member cards into DEST/characters")


def _say(text: str) -> None:
    print(strip_controls(text))


def cmd_group(args: argparse.Namespace) -> int:
    from rpchat.group.library import create_group, find_group, list_groups, load_members, resolve_card
    from rpchat.group.model import save_group
    from rpchat.group.transfer import copy_member_cards, export_st_group, import_st_group
    from rpchat.session import open_chat_session

    cmd = args.group_command
    if cmd == "new":
        cards = [resolve_card(c) for c in args.cards]
        group, path = create_group(args.name, cards)
        if args.order != "natural":
            group.strategy = STRATEGIES[args.order]
            save_group(group, path)
        _say(f"group {group.name}: {', '.join(group.members)} ({group.strategy_name}); {path}")
        return 0
    if cmd == "list":
        for entry in list_groups():
            if entry.group is None:
                _say(f"{entry.path.name}: error: {entry.error}")
            else:
                g = entry.group
                _say(f"{g.name}\t{len(g.members)} members\t{g.strategy_name}\t{len(g.chats)} chat(s)")
        return 0
    if cmd == "import":
        group, path, notes = import_st_group(args.src)
        for note in notes:
            print(f"rpchat: note: {strip_controls(note)}", file=sys.stderr)
        _say(f"imported group {group.name} ({len(group.chats)} chat(s)) as {path}")
        return 0
    path = find_group(args.name)
    group = load_group(path)
    if cmd == "show":
        notices: list[str] = []
        members = {m.avatar: m for m in load_members(group, notices)}
        _say(f"{group.name} (id {group.id}), turn order: {group.strategy_name}")
        for avatar in group.members:
            m = members.get(avatar)
            state = " (muted)" if avatar in group.disabled_members else ""
            talk = f", talkativeness {m.talkativeness:g}" if m else ", card missing"
            _say(f"  {m.name if m else avatar} [{avatar}]{talk}{state}")
        _say(f"chats: {', '.join(group.chats)} (current: {group.chat_id})")
        return 0
    if cmd == "export":
        files = export_st_group(group, args.dest)
        if args.cards:
            files += copy_member_cards(group, args.dest)
        _say(f"wrote {len(files)} file(s) under {args.dest}")
        return 0
    # Member changes go through the session's one mutation mechanism (saved, or put back).
    session = open_chat_session(None, group=path)
    cast = session.cast
    assert cast is not None
    with session.change():
        if cmd == "add":
            member = cast.add_member(args.card)
            said = f"{member.name} joined {group.name}"
        elif cmd == "order":
            cast.set_strategy(args.order)
            said = f"{group.name}: turn order {args.order}"
        else:
            member = cast.member(args.member)
            if cmd == "remove":
                cast.remove_member(member)
                said = f"{member.name} left {group.name}"
            else:
                cast.set_muted(member, cmd == "mute")
                said = f"{member.name} is {'muted' if cmd == 'mute' else 'speaking again'} in {group.name}"
    _say(said)
    return 0


def check_card_or_group(args: argparse.Namespace) -> None:
    """One of a card and ``--group``; ``--speaker`` only with a group."""
    if (args.card is None) == (args.group is None):
        raise UsageError("name a card or --group (one of them)")
    if args.speaker and not args.group:
        raise UsageError("--speaker needs --group")


def check_speaker(session: Any, args: argparse.Namespace) -> None:
    """Before anything is sent: a group with manual turns needs ``--speaker``; a named speaker must be a member."""
    cast = session.cast
    if cast is None:
        return
    if args.speaker:
        cast.member(args.speaker)
    elif cast.group.strategy_name == "manual":
        raise UsageError(f"group {cast.group.name} takes manual turns: name who answers with --speaker")


def reply_speakers(session: Any, args: argparse.Namespace) -> list[Any]:
    """Who answers `rpchat reply`: [None] for a 1:1 chat; in a group ``--speaker`` or the turn order."""
    cast = session.cast
    if cast is None:
        return [None]
    if args.speaker:
        return [cast.member(args.speaker)]
    found: list[Any] = session.next_speakers()
    if not found:
        raise UsageError(f"group {cast.group.name} takes manual turns: name who answers with --speaker")
    return found
