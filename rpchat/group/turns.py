"""Who speaks next in a group, by SillyTavern's rules (public/scripts/group-chats.js).

- natural: every member named in the last message (word by word, in the order the words come), then each
  member whose talkativeness beats a dice roll (in shuffled order); when nobody is picked, one member at
  random, preferring the talkative. The member who spoke last is skipped unless self-responses are allowed
  or the user spoke last.
- round-robin (SillyTavern's "list order"): every unmuted member once, in member order.
- manual: nobody speaks until the user picks a speaker.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rpchat.cards.model import Card
from rpchat.chat.model import Turn

TALKATIVENESS_DEFAULT = 0.5  # SillyTavern's talkativeness_default
_WORD = re.compile(r"\b\w+\b", re.ASCII)  # JavaScript's \w is ASCII-only


@dataclass(frozen=True)
class Member:
    """A group member: the card file name (SillyTavern's avatar id), its card and its display name."""

    avatar: str
    card: Card
    name: str
    talkativeness: float


def talkativeness(card: Card) -> float:
    """The card's ``talkativeness`` extension (0..1, SillyTavern writes it as text); 0.5 when unset or odd."""
    value = card.extensions.get("talkativeness", card.outer.get("talkativeness"))
    try:
        number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else math.nan
    except ValueError:
        number = math.nan
    return TALKATIVENESS_DEFAULT if math.isnan(number) else number


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def natural_order(members: Sequence[Member], last: Turn | None, *, allow_self: bool = False,
                  rng: random.Random | None = None) -> list[Member]:
    """SillyTavern's activateNaturalOrder over the unmuted ``members``, after the ``last`` message."""
    rng = rng or random.Random()
    user_input = last is not None and last.is_user
    text = last.text if last is not None and not last.hidden else ""
    banned = last.name if last is not None and not user_input and not allow_self else None
    picked: list[Member] = []
    for word in _words(text):
        for member in members:
            if member.name != banned and word in _words(member.name):
                picked.append(member)
                break
    chatty: list[Member] = []
    shuffled = list(members)
    rng.shuffle(shuffled)
    for member in shuffled:
        if member.name == banned:
            continue
        if member.talkativeness >= rng.random():
            picked.append(member)
        if member.talkativeness > 0:
            chatty.append(member)
    pool = chatty or list(members)
    if not picked and pool:
        picked.append(pool[rng.randrange(len(pool))])
    unique: dict[str, Member] = {}
    for member in picked:
        unique.setdefault(member.avatar, member)
    return list(unique.values())


def speakers(strategy: str, members: Sequence[Member], last: Turn | None, *, allow_self: bool = False,
             rng: random.Random | None = None) -> list[Member]:
    """Who answers next, in order, under ``strategy`` (natural, round-robin, manual)."""
    if strategy == "round-robin":
        return list(members)
    if strategy == "manual":
        return []
    return natural_order(members, last, allow_self=allow_self, rng=rng)
