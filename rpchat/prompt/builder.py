"""The prompt builder: card + persona + chat history -> prompt segments in a `PromptFormat`.

Format text is tagged "template"; everything that comes from a card, a persona, a lorebook or the
chat (names included) is tagged "user", so the engine tokenizes it without special tokens.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rpchat.cards.model import Card
from rpchat.chat.model import AuthorsNote, Turn
from rpchat.errors import ChatError, ConfigError
from rpchat.personas import Persona
from rpchat.prompt.fitting import choose_cut
from rpchat.prompt.formats import CONTENT_VARS, MEMBERS, PromptFormat, Template
from rpchat.prompt.lorebook import (
    DepthInsert,
    LoreActivation,
    Lorebook,
    LoreHit,
    activate,
    lorebook_from_card,
)
from rpchat.prompt.macros import clean_text, expand_macros, normalize_newlines
from rpchat.prompt.segments import Segment, join_text

Counter = Callable[[str], int]
MODES = ("reply", "continue", "impersonate")
KEEP_LAST = 2  # the last exchange always stays in the prompt
LORE_BUDGET_RATIO = 0.25
MAX_SCAN_MESSAGES = 1000  # lorebooks never look further back than this
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LORE_BEFORE: Template = (("lore_before", True),)
_LORE_AFTER: Template = (("lore_after", True),)
_NOTE_BEFORE: Template = (("note_before", True),)
_NOTE_AFTER: Template = (("note_after", True),)
_SUMMARY: Template = (("Story so far: ", False), ("summary", True))
# At one depth SillyTavern places the assistant's, then the user's, then the system's message.
_ROLE_ORDER = {"assistant": 0, "user": 1, "system": 2}


@dataclass(frozen=True)
class BuiltPrompt:
    """A finished prompt: tagged text, stop strings and what context fitting and lorebooks did."""

    segments: tuple[Segment, ...]
    stop: tuple[str, ...]
    dropped: tuple[int, ...] = ()  # history indices left out to fit the context
    n_tokens: int | None = None  # tokens of the whole prompt, when a counter was given
    first_kept: int | None = None  # history index of the first kept turn after a cut, else None
    lore: LoreActivation | None = None  # lorebook entries that fired, and why
    format_name: str = ""
    mode: str = "reply"
    budget: int | None = None  # n_ctx - max_new, when fitting was asked for
    note: AuthorsNote | None = None  # the author's note when it is in this prompt

    @property
    def text(self) -> str:
        """The prompt as one string."""
        return join_text(self.segments)

    @property
    def lore_fired(self) -> tuple[LoreHit, ...]:
        """Lorebook entries placed in this prompt, in insertion order."""
        return self.lore.hits if self.lore else ()


def _check_length(fmt: PromptFormat, length: str | None, what: str) -> str | None:
    if length is None or length == "":
        return None
    if not isinstance(length, str) or not _WORD.fullmatch(length) or (fmt.lengths and length not in fmt.lengths):
        allowed = ", ".join(fmt.lengths) or "a plain word"
        raise ConfigError(f"unknown {what} {str(length)[:40]!r} (format {fmt.name} takes: {allowed})", fmt.name)
    return length


def _render(tpl: Template, values: dict[str, str]) -> list[Segment]:
    # Literal template text is "template"; every variable brings in "user" text.
    out: list[Segment] = []
    for text, is_var in tpl:
        if is_var:
            if values[text]:
                out.append(Segment(values[text], "user"))
        else:
            out.append(Segment(text, "template"))
    return out


def _header(fmt: PromptFormat, header: str, length: str | None) -> list[Segment]:
    if not header and not length:
        return []  # a format without headers (SillyTavern's plain chat, or a sequence-less template)
    segs = [Segment(header, "template")]
    if length:
        # The length is checked against the format's own list, so it is template text.
        segs += [Segment(s.text, "template") for s in _render(fmt.length_modifier, {"length": length})]
    segs.append(Segment("\n", "template"))
    return segs


def _message(fmt: PromptFormat, name: str, text: str, *, open_end: bool = False) -> list[Segment]:
    """``Name: text``. With ``open_end`` the message is left open (the model writes the rest)."""
    out: list[Segment] = []
    for part, is_var in fmt.message:
        if not is_var:
            out.append(Segment(part, "template"))
        elif part == "name":
            out.append(Segment(name, "user"))
        else:
            if not text:
                # "Name:" with nothing after it, not "Name: ".
                if out and out[-1].kind == "template":
                    out[-1] = Segment(out[-1].text.rstrip(" \t"), "template")
            else:
                out.append(Segment(text, "user"))
            if open_end:
                break
    return out


def _stop(fmt: PromptFormat, char: str, user: str, mode: str, others: Sequence[str] = ()) -> tuple[str, ...]:
    # Impersonation writes as the user, so it must stop where the character would speak.
    if mode == "impersonate":
        char, user = user, char
    values = {"char": char, "user": user}
    stops = ["".join(values[t] if v else t for t, v in tpl) for tpl in fmt.stop]
    # In a group every other member is stopped like the user is, so no one speaks for another.
    for other in others:
        stops += ["".join(other if v and t == "user" else values[t] if v else t for t, v in tpl)
                  for tpl in fmt.stop if ("user", True) in tpl]
    return tuple(dict.fromkeys(s for s in stops if s))


def _merge(segments: list[Segment]) -> tuple[Segment, ...]:
    out: list[Segment] = []
    for s in segments:
        if not s.text:
            continue
        if out and out[-1].kind == s.kind:
            out[-1] = Segment(out[-1].text + s.text, s.kind)
        else:
            out.append(s)
    return tuple(out)


def _instruction(
    fmt: PromptFormat, values: dict[str, str], members: Sequence[dict[str, str]] | None = None
) -> list[Segment]:
    """The instruction block; a paragraph whose text variables are empty is left out.

    ``members`` (a group chat) holds each active member's own values; their paragraphs stand where the
    format's ``{{members}}`` paragraph is (see `PromptFormat.group_layout`).
    """
    per_member: tuple[Template, ...] = ()
    if members is None:
        paragraphs = list(fmt.instruction)
    else:
        shared, per_member = fmt.group_layout()
        paragraphs = list(shared)

    def uses(var: str) -> bool:
        return any((var, True) in p for p in [*paragraphs, *per_member])

    # A user format without lore slots still gets lore: before everything, after the description.
    if not uses("lore_before"):
        paragraphs.insert(0, _LORE_BEFORE)
    if not uses("lore_after"):
        at = next((i + 1 for i, p in enumerate(paragraphs) if ("description", True) in p or p == MEMBERS),
                  len(paragraphs))
        paragraphs.insert(at, _LORE_AFTER)
    # An author's note placed at the top opens or closes the instruction (SillyTavern's "before" and
    # "after" the story string); only when there is one, so formats stay byte-exact without it.
    # A user format without a summary slot gets one before its closing paragraph (the "chat with
    # {{user}} below this line" sentence), or last when that paragraph carries card text.
    if values["summary"] and not fmt.uses("summary"):
        closing = paragraphs and not any(is_var and name in CONTENT_VARS for name, is_var in paragraphs[-1])
        paragraphs.insert(len(paragraphs) - 1 if closing and len(paragraphs) > 1 else len(paragraphs), _SUMMARY)
    if values["note_before"]:
        paragraphs.insert(0, _NOTE_BEFORE)
    if values["note_after"]:
        paragraphs.append(_NOTE_AFTER)
    out = [Segment(fmt.instruction_header, "template"), Segment("\n", "template")] if fmt.instruction_header else []
    placed: list[tuple[Template, dict[str, str]]] = []
    for p in paragraphs:
        if p == MEMBERS and members is not None:
            placed += [(mp, {**values, **m}) for m in members for mp in per_member]
        else:
            placed.append((p, values))
    kept = [(p, v) for p, v in placed if all(v[name] for name, is_var in p if is_var and name in CONTENT_VARS)]
    for i, (p, v) in enumerate(kept):
        if i:
            out.append(Segment(fmt.instruction_separator, "template"))
        out += _render(p, v)
    return out


def join_names(names: Sequence[str]) -> str:
    """``Alice``, ``Alice and Bob``, ``Alice, Bob and Carol``: how the group instruction names its members."""
    if len(names) <= 1:
        return "".join(names)
    return f"{', '.join(names[:-1])} and {names[-1]}"


def _one_line(name: str) -> str:
    # Names are one line each: they end the prompt ("Name:") and appear in the stop strings.
    return " ".join(name.split())


def _character_values(card: Card, char: str, user: str) -> dict[str, str]:
    """What the instruction says about one character: its name, description and personality."""
    card_description = description = clean_text(card.description, char, user)
    personality = clean_text(card.personality, char, user)
    if personality:
        description = f"{description}\n{personality}" if description else personality
    return {"char": char, "description": description, "card_description": card_description,
            "personality": personality}


def _turn_text(turn: Turn) -> str:
    # A damaged chat may point past its swipes; show the last one rather than fail the prompt.
    if 0 <= turn.swipe_id < len(turn.swipes):
        return turn.swipes[turn.swipe_id]
    return turn.swipes[-1] if turn.swipes else ""


def _is_reply(turn: Turn) -> bool:
    """A character message (not the user's, not narration)."""
    return not turn.is_user and not turn.narrator


def _note_text(lore: LoreActivation | None, note: AuthorsNote, history: Sequence[Turn], char: str, user: str) -> str:
    """The author's note with the lore placed around it, or "" when the interval leaves it out."""
    if not note.fires(sum(1 for t in history if t.is_user)):
        return ""
    top, bottom = (lore.an_top, lore.an_bottom) if lore else ((), ())
    # SillyTavern: entries above, the note, entries below, one per line (no blank line for an empty note).
    parts = [*top, clean_text(note.text, char, user), *bottom]
    return "\n".join(p for p in parts if p)


def _place(blocks: list[list[Segment]], inserts: list[tuple[int, str, list[Segment]]]) -> list[list[Segment]]:
    """``blocks`` with each insert put ``depth`` blocks from the end (at the start when deeper)."""
    at: dict[int, list[tuple[int, list[Segment]]]] = {}
    for depth, role, block in inserts:
        at.setdefault(max(0, len(blocks) - depth), []).append((_ROLE_ORDER[role], block))
    out: list[list[Segment]] = []
    for i in range(len(blocks) + 1):
        out += [block for _, block in sorted(at.get(i, []), key=lambda x: x[0])]
        if i < len(blocks):
            out.append(blocks[i])
    return out


def _books(
    cards: Sequence[Card], lorebook: Lorebook | Sequence[Lorebook] | None, card_lorebook: bool = True,
    owners: Sequence[str] | None = None, user: str = "",
) -> list[Lorebook]:
    """The cards' own lorebooks, then the others. With ``owners`` (a group) each card's book says its own
    card's name for ``{{char}}``, whoever speaks, so the entries mean what their writer meant."""
    books: list[Lorebook] = []
    for i, card in enumerate(cards if card_lorebook else ()):
        own = lorebook_from_card(card)
        if own is not None and owners is not None:
            own = dataclasses.replace(own, entries=tuple(
                dataclasses.replace(e, content=expand_macros(e.content, owners[i], user),
                                    keys=tuple(expand_macros(k, owners[i], user) for k in e.keys),
                                    secondary_keys=tuple(expand_macros(k, owners[i], user) for k in e.secondary_keys))
                for e in own.entries))
        if own is not None:
            books.append(own)
    if isinstance(lorebook, Lorebook):
        books.append(lorebook)
    elif lorebook:
        books.extend(lorebook)
    return books


def _fit(
    fmt: PromptFormat,
    head: list[list[Segment]],
    turn_blocks: list[list[Segment]],
    tail: list[Segment],
    inserts: list[list[Segment]],
    assemble: Callable[[int], list[Segment]],
    counter: Counter | None,
    budget: int | None,
    keep_last: int = KEEP_LAST,
) -> tuple[int, int | None]:
    """How many turn blocks to leave out (never the last ``keep_last``), and the prompt's token count
    (None without a counter)."""
    if counter is None:
        return 0, None
    cache: dict[str, int] = {}

    def count(text: str) -> int:
        # Each distinct text is counted once per build.
        if text not in cache:
            cache[text] = counter(text)
        return cache[text]

    if budget is None:
        return 0, count(join_text(assemble(0)))
    sep = fmt.block_separator
    costs = [count(sep + join_text(b)) for b in turn_blocks]
    fixed = sum(count(join_text(b)) for b in head) + (len(head) - 1) * count(sep)
    if tail:
        fixed += count(sep + join_text(tail))
    # Insertions at depth stay whatever is cut.
    fixed += sum(count(sep + join_text(b)) for b in inserts)
    cut, error = 0, 0
    n_tokens = 0
    for _ in range(3):
        cut = max(cut, choose_cut(costs, fixed + error, budget, keep_last=keep_last))
        n_tokens = count(join_text(assemble(cut)))
        # Separate counts do not add up exactly; correct with the real total and try again.
        if n_tokens <= budget or cut >= max(0, len(costs) - keep_last):
            break
        error = max(error + 1, n_tokens - (fixed + sum(costs[cut:])))
    return cut, n_tokens


def build_prompt(
    fmt: PromptFormat,
    card: Card,
    persona: Persona,
    history: Sequence[Turn],
    *,
    scenario: str | None = None,
    length: str | None = None,
    mode: str = "reply",
    input_length: str | None = None,
    counter: Counter | None = None,
    n_ctx: int | None = None,
    max_new: int = 0,
    lorebook: Lorebook | Sequence[Lorebook] | None = None,
    card_lorebook: bool = True,
    note: AuthorsNote | None = None,
    group: Sequence[Card] | None = None,
    muted: Sequence[str] = (),
    summary: str = "",
) -> BuiltPrompt:
    """Build the prompt for the next message.

    ``mode``: "reply" ends with ``Char:``; "continue" ends with the last character message so
    the model extends it; "impersonate" ends with the input header and ``User:``. ``scenario``
    (when not None) replaces the card's. ``card_lorebook=False`` ignores the card's own
    character_book. With ``counter`` and ``n_ctx``, older turns are left out
    in chunks so the prompt plus ``max_new`` fits. ``note`` is the chat's author's note; ``summary``
    the story so far of the turns that fell out (an instruction paragraph, see README "Long chats").

    ``group`` (a group chat) lists the active members, ``card`` among them: the one who speaks next.
    Every member's persona goes into the instruction, character messages carry their speaker's name,
    and every other member's name is a stop string, the ``muted`` members' (left out of the prompt) too
    (see README, "Group chats").
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    length = _check_length(fmt, length, "length") if fmt.response_length else None
    input_length = _check_length(fmt, input_length, "input length") if fmt.input_length else None
    # Names are one line each: they end the prompt ("Name:") and appear in the stop strings.
    char = _one_line(card.display_name) or "Character"
    user = _one_line(persona.name) or "User"
    members = list(group) if group is not None else None
    if members is not None and all(m is not card for m in members):
        members.append(card)
    names = [_one_line(m.display_name) or "Character" for m in members] if members is not None else [char]
    everyone = join_names(names)

    # The name a character message is shown under: its speaker's, in a group.
    def speaker(turn: Turn) -> str:
        return (_one_line(turn.name) or char) if members is not None else char

    # Hidden turns (SillyTavern's /hide) stay in the chat but never reach the model.
    shown = [i for i, t in enumerate(history) if not t.hidden]
    if mode == "continue" and (not shown or shown[-1] != len(history) - 1 or not _is_reply(history[-1])):
        raise ChatError("nothing to continue: the last message is not the character's", "chat")

    # Chat text: newlines normalized, macros expanded, trimmed (the continued message keeps its end).
    texts = {i: clean_text(_turn_text(history[i]), speaker(history[i]), user) for i in shown}
    if mode == "continue":
        texts[shown[-1]] = expand_macros(normalize_newlines(_turn_text(history[-1])), char, user).lstrip()
        if members is not None and _one_line(history[-1].name) != char:
            raise ChatError(f"{char} cannot continue {_one_line(history[-1].name)}'s message", "chat")

    greeting = ""
    if fmt.greeting_in_instruction and shown and shown[0] == 0 and _is_reply(history[0]):
        greeting = texts[shown[0]]
        shown = shown[1:]

    # Lorebooks scan the latest messages as "Name: text", the way SillyTavern does (narration bare).
    books = _books(members if members is not None else [card], lorebook, card_lorebook,
                   names if members is not None else None, user)
    lore: LoreActivation | None = None
    if books:
        recent = [i for i in texts if i >= len(history) - MAX_SCAN_MESSAGES]
        scan = [texts[i] if history[i].narrator else f"{user if history[i].is_user else speaker(history[i])}: {texts[i]}"
                for i in recent]
        lore_budget = int(n_ctx * LORE_BUDGET_RATIO) if n_ctx else None
        lore = activate(books, scan, char=char, user=user, counter=counter, budget=lore_budget)

    # The author's note and lore "at depth" become messages inside the chat; the note at the top
    # goes into the instruction instead (see README, "Lore and the author's note").
    note = note or AuthorsNote()
    note_text = _note_text(lore, note, history, char, user)
    at_depth = list(lore.at_depth) if lore else []
    if note_text and note.position == "in_chat":
        # SillyTavern sorts the note before the entries of the same depth and role, in one message.
        same = next((i for i, d in enumerate(at_depth) if (d.depth, d.role) == (note.depth, note.role)), None)
        if same is None:
            at_depth.insert(0, DepthInsert(note.depth, note.role, note_text))
        else:
            at_depth[same] = DepthInsert(note.depth, note.role, f"{note_text}\n{at_depth[same].text}")

    # In a group the instruction is the same whoever speaks next, so the model's cache of it stays valid.
    shared = everyone if members is not None else char
    own = [_character_values(m, n, user) for m, n in zip(members or [card], names)]
    if scenario is None and members is not None:
        scenes = [clean_text(m.scenario, n, user) for m, n in zip(members, names)]
        scene = "\n".join(dict.fromkeys(s for s in scenes if s))
    else:
        scene = clean_text(card.scenario if scenario is None else scenario, shared, user)
    values = {
        "char": shared,
        "chars": everyone,
        "user": user,
        **(own[0] if members is None else {"description": "", "card_description": "", "personality": ""}),
        "persona": clean_text(persona.description, shared, user),
        "scenario": scene,
        "greeting": greeting,
        "lore_before": "\n".join(lore.before) if lore else "",
        "lore_after": "\n".join(lore.after) if lore else "",
        "note_before": note_text if note.position == "before_instruction" else "",
        "note_after": note_text if note.position == "after_instruction" else "",
        "summary": clean_text(summary, char, user),
    }
    instruction = _instruction(fmt, values, own if members is not None else None)
    head: list[list[Segment]] = []
    if fmt.preamble:
        head.append([Segment(fmt.preamble, "template")])
    head.append(instruction)

    # One block per turn; the response length goes on the last response header only. Narration is
    # the world speaking, so it sits on the input side, nameless (see README, "SillyTavern chats").
    last_header = fmt.last_response_header or fmt.response_header
    turn_blocks: list[list[Segment]] = []
    for i in shown:
        turn = history[i]
        last = i == len(history) - 1
        if turn.narrator:
            block = _header(fmt, fmt.input_header, None) + [Segment(texts[i], "user")]
        elif turn.is_user:
            block = _header(fmt, fmt.input_header, input_length) + _message(fmt, user, texts[i])
        elif mode == "continue" and last:
            block = _header(fmt, last_header, length) + _message(fmt, char, texts[i], open_end=True)
        else:
            block = _header(fmt, fmt.response_header, None) + _message(fmt, speaker(turn), texts[i])
        turn_blocks.append(block)
    inserts: list[tuple[int, str, list[Segment]]] = []
    for d in at_depth:
        if d.role == "system":
            block = _header(fmt, fmt.input_header, None) + [Segment(d.text, "user")]
        elif d.role == "user":
            block = _header(fmt, fmt.input_header, input_length) + _message(fmt, user, d.text)
        else:
            block = _header(fmt, fmt.response_header, None) + _message(fmt, char, d.text)
        # A continued message is never split: depth 0 goes before it (as in SillyTavern).
        inserts.append((max(d.depth, 1) if mode == "continue" else d.depth, d.role, block))
    tail: list[Segment] = []
    if mode == "reply":
        tail = _header(fmt, last_header, length) + _message(fmt, char, "", open_end=True)
    elif mode == "impersonate":
        tail = _header(fmt, fmt.input_header, input_length) + _message(fmt, user, "", open_end=True)

    sep = Segment(fmt.block_separator, "template")

    # SillyTavern's "chat start" line goes between the instruction and the chat instead.
    opening = sep if fmt.history_start is None else Segment(fmt.history_start, "template")

    def assemble(cut: int) -> list[Segment]:
        out: list[Segment] = []
        chat = _place(turn_blocks[cut:], inserts)
        for i, block in enumerate([*head, *chat, *([tail] if tail else [])]):
            if out:
                out.append(opening if i == len(head) else sep)
            out += block
        return out

    budget = n_ctx - max_new if n_ctx else None
    # A member who left the group but whose lines stay in the chat is stopped like the others.
    former = [speaker(history[i]) for i in shown if not history[i].is_user] if members is not None else []
    keep = KEEP_LAST
    if members is not None:
        # A group answers the user's message one member after another: the message and the answers so far
        # (one round) stay in the prompt, or the next member would answer without seeing what was said.
        since_user = next((len(shown) - j for j in range(len(shown) - 1, -1, -1) if history[shown[j]].is_user), 0)
        if since_user <= len(members) + 1:
            keep = max(keep, since_user)
    cut, n_tokens = _fit(fmt, head, turn_blocks, tail, [b for _, _, b in inserts], assemble, counter, budget, keep)
    segments = _merge(assemble(cut))
    return BuiltPrompt(
        segments=segments,
        stop=_stop(fmt, char, user, mode, [n for n in dict.fromkeys([*names, *map(_one_line, muted), *former])
                                           if n != char]),
        dropped=tuple(shown[:cut]),
        n_tokens=n_tokens,
        first_kept=shown[cut] if cut else None,
        lore=lore,
        format_name=fmt.name,
        mode=mode,
        budget=budget,
        note=note if note_text else None,
    )
