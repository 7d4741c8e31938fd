"""Lorebooks: a card's character_book (V2), a V3 lorebook or SillyTavern world info, and activation.

Activation follows SillyTavern: keys are searched in the last few messages ("Name: text"),
secondary keys apply a selective logic, constant entries always fire, the content of fired
entries may trigger more entries (recursion), and a token budget caps the total. It is
deterministic (no probability rolls), so the same chat gives the same prompt.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rpchat.cards.model import Card
from rpchat.chat.model import ROLES
from rpchat.errors import ConfigError
from rpchat.prompt.lorekeys import KeyMatcher
from rpchat.prompt.macros import expand_macros, normalize_newlines
from rpchat.userfile import decode_json, read_capped

DEFAULT_SCAN_DEPTH = 2
DEFAULT_MAX_RECURSION = 3
MAX_BOOK_BYTES = 16 * 1024 * 1024
MAX_ENTRIES = 10_000
MAX_SCAN_CHARS = 10_000  # the newest chat text a key search looks at, at most (bounds regex time)
# SillyTavern's selectiveLogic values.
LOGIC_NAMES = {0: "AND ANY", 1: "NOT ALL", 2: "NOT ANY", 3: "AND ALL"}
# SillyTavern's numeric world-info positions (world_info_position in its world-info.js; 7, the
# outlet, is from newer versions). Example-message positions go after the character (rpchat sends
# no example dialogues); outlet entries only reach a prompt through an {{outlet::}} macro, so never here.
ST_POSITIONS = ("before_char", "after_char", "an_top", "an_bottom", "at_depth", "em_top", "em_bottom", "outlet")
DEFAULT_DEPTH = 4  # SillyTavern's default insertion depth (entries and the author's note)
MAX_DEPTH = 1000  # SillyTavern's MAX_INJECTION_DEPTH


@dataclass(frozen=True)
class LoreEntry:
    """One lorebook entry, normalized from any of the supported formats."""

    uid: str
    keys: tuple[str, ...]
    content: str
    name: str = ""
    secondary_keys: tuple[str, ...] = ()
    enabled: bool = True
    constant: bool = False
    selective: bool = True
    selective_logic: int = 0
    insertion_order: int = 100
    priority: int = 0
    position: str = "after_char"  # one of ST_POSITIONS
    depth: int = DEFAULT_DEPTH  # for "at_depth": messages from the end of the chat
    role: str = "system"  # for "at_depth": one of ROLES
    case_sensitive: bool | None = None  # None: the book's setting
    whole_words: bool | None = None
    use_regex: bool = False
    scan_depth: int | None = None  # None: the book's, else the default (2 messages)
    exclude_recursion: bool = False  # cannot be triggered by other entries' content
    prevent_recursion: bool = False  # its content does not trigger other entries
    delay_until_recursion: bool = False  # fires only from other entries' content
    force: bool | None = None  # V3 @@activate (True) / @@dont_activate (False)


@dataclass(frozen=True)
class Lorebook:
    """A named list of entries with book-wide defaults."""

    name: str
    entries: tuple[LoreEntry, ...]
    scan_depth: int | None = None
    token_budget: int | None = None
    recursive: bool = False
    case_sensitive: bool = False
    whole_words: bool = False
    skipped: int = 0  # malformed entries left out while reading


@dataclass(frozen=True)
class LoreHit:
    """An entry that fired, and why (for the prompt inspector)."""

    book: str
    uid: str
    name: str  # the entry's name or comment, else its first key
    position: str
    reason: str
    step: int  # 0: found in the chat; n: found in the content of entries fired at step n-1
    tokens: int | None


@dataclass(frozen=True)
class DepthInsert:
    """Text inserted into the chat ``depth`` messages from its end, spoken as ``role``."""

    depth: int
    role: str  # one of ROLES
    text: str


@dataclass(frozen=True)
class LoreActivation:
    """What the lorebooks add to one prompt."""

    before: tuple[str, ...]  # contents placed before the character block, in insertion order
    after: tuple[str, ...]
    hits: tuple[LoreHit, ...]  # placed entries, in insertion order
    over_budget: tuple[LoreHit, ...] = ()  # fired but left out by the token budget
    budget: int | None = None
    tokens: int = 0
    an_top: tuple[str, ...] = ()  # joined with the author's note, above and below its text
    an_bottom: tuple[str, ...] = ()
    at_depth: tuple[DepthInsert, ...] = ()  # one per (depth, role), in order of first appearance


# --- reading --------------------------------------------------------------------------------------
def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _texts(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list):
        return ()
    return tuple(k.strip() for k in value if isinstance(k, str) and k.strip())


def _int(value: Any, default: int | None) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    if math.isnan(value) or abs(value) > 1e12:
        return default
    return int(value)


def _depth(value: Any) -> int | None:
    # A negative or absurd scan depth is ignored (the book's or the default depth applies).
    number = _int(value, None)
    return number if number is not None and 0 <= number <= 1000 else None


def _bool(value: Any, default: bool | None) -> bool | None:
    return value if isinstance(value, bool) else default


def _st_position(value: Any, default: str) -> str:
    number = _int(value, None)
    return ST_POSITIONS[number] if number is not None and 0 <= number < len(ST_POSITIONS) else default


def _role(value: Any) -> str:
    number = _int(value, 0)
    return ROLES[number] if number is not None and 0 <= number < len(ROLES) else "system"


def _insert_depth(value: Any) -> int:
    number = _int(value, DEFAULT_DEPTH)
    return number if number is not None and 0 <= number <= MAX_DEPTH else DEFAULT_DEPTH


def _logic(value: Any) -> int:
    number = _int(value, 0)
    return number if number in LOGIC_NAMES else 0


def _decorators(content: str) -> tuple[str, dict[str, str]]:
    """Strip V3 ``@@decorator`` lines from the start of the content and return them."""
    found: dict[str, str] = {}
    lines = content.split("\n")
    i = 0
    while i < len(lines) and lines[i].startswith("@@"):
        name, _, arg = lines[i][2:].partition(" ")
        found[name.strip().lower()] = arg.strip()
        i += 1
    return "\n".join(lines[i:]), found


def _with_decorators(entry: LoreEntry) -> LoreEntry:
    content, deco = _decorators(entry.content)
    if not deco:
        return entry
    changes: dict[str, Any] = {"content": content}
    if "activate" in deco:
        changes["force"] = True
    if "dont_activate" in deco:
        changes["force"] = False
    if "scan_depth" in deco and deco["scan_depth"].isdigit():
        changes["scan_depth"] = int(deco["scan_depth"])
    if deco.get("position") in ("before_desc", "after_desc"):
        changes["position"] = "before_char" if deco["position"] == "before_desc" else "after_char"
    if deco.get("depth", "").isdigit() and int(deco["depth"]) <= MAX_DEPTH:
        changes["position"] = "at_depth"
        changes["depth"] = int(deco["depth"])
    if deco.get("role") in ROLES:
        changes["role"] = deco["role"]
    if "additional_keys" in deco:
        changes["keys"] = entry.keys + _texts(deco["additional_keys"])
    return replace(entry, **changes)


def _card_entry(raw: dict[str, Any], index: int) -> LoreEntry:
    # V2 character_book / V3 lorebook entry; SillyTavern keeps its own fields in extensions.
    ext_raw = raw.get("extensions")
    ext: dict[str, Any] = ext_raw if isinstance(ext_raw, dict) else {}
    # SillyTavern reads its own extensions.position first, then the spec's before_char/after_char.
    named = "before_char" if raw.get("position") == "before_char" else "after_char"
    position = _st_position(ext.get("position"), named)
    entry = LoreEntry(
        uid=str(raw.get("id", index)),
        keys=_texts(raw.get("keys")),
        content=normalize_newlines(_text(raw.get("content"))),
        name=_text(raw.get("name")) or _text(raw.get("comment")),
        secondary_keys=_texts(raw.get("secondary_keys")),
        enabled=_bool(raw.get("enabled"), True) is not False,
        constant=_bool(raw.get("constant"), False) is True,
        selective=_bool(raw.get("selective"), True) is not False,
        selective_logic=_logic(ext.get("selectiveLogic")),
        insertion_order=_int(raw.get("insertion_order"), 100) or 0,
        priority=_int(raw.get("priority"), 0) or 0,
        position=position,
        depth=_insert_depth(ext.get("depth")),
        role=_role(ext.get("role")),
        case_sensitive=_bool(raw.get("case_sensitive"), _bool(ext.get("case_sensitive"), None)),
        whole_words=_bool(ext.get("match_whole_words"), None),
        use_regex=_bool(raw.get("use_regex"), False) is True,
        scan_depth=_depth(ext.get("scan_depth")),
        exclude_recursion=_bool(ext.get("exclude_recursion"), False) is True,
        prevent_recursion=_bool(ext.get("prevent_recursion"), False) is True,
        delay_until_recursion=bool(ext.get("delay_until_recursion", False)),
    )
    return _with_decorators(entry)


def _world_entry(raw: dict[str, Any], index: int) -> LoreEntry:
    # SillyTavern world info entry (the fields of its own JSON files).
    entry = LoreEntry(
        uid=str(raw.get("uid", index)),
        keys=_texts(raw.get("key")),
        content=normalize_newlines(_text(raw.get("content"))),
        name=_text(raw.get("comment")),
        secondary_keys=_texts(raw.get("keysecondary")),
        enabled=_bool(raw.get("disable"), False) is not True,
        constant=_bool(raw.get("constant"), False) is True,
        selective=_bool(raw.get("selective"), True) is not False,
        selective_logic=_logic(raw.get("selectiveLogic")),
        insertion_order=_int(raw.get("order"), 100) or 0,
        position=_st_position(raw.get("position"), "before_char"),
        depth=_insert_depth(raw.get("depth")),
        role=_role(raw.get("role")),
        case_sensitive=_bool(raw.get("caseSensitive"), None),
        whole_words=_bool(raw.get("matchWholeWords"), None),
        scan_depth=_depth(raw.get("scanDepth")),
        exclude_recursion=_bool(raw.get("excludeRecursion"), False) is True,
        prevent_recursion=_bool(raw.get("preventRecursion"), False) is True,
        delay_until_recursion=bool(raw.get("delayUntilRecursion", False)),
    )
    # A probability of 0 means "never" in SillyTavern; other rolls are not reproduced.
    if raw.get("useProbability") is True and _int(raw.get("probability"), 100) == 0:
        entry = replace(entry, enabled=False)
    return _with_decorators(entry)


def parse_lorebook(data: Any, source: str | Path, name: str = "") -> Lorebook:
    """Read a V2 ``character_book``, a V3 lorebook (also ``{"spec": "lorebook_v3"}``) or ST world info."""
    if isinstance(data, dict) and data.get("spec") == "lorebook_v3" and isinstance(data.get("data"), dict):
        data = data["data"]
    if not isinstance(data, dict):
        raise ConfigError("a lorebook must be a JSON object with 'entries'", source)
    raw_entries = data.get("entries")
    if isinstance(raw_entries, dict):
        items = list(raw_entries.values())
        world = True
    elif isinstance(raw_entries, list):
        items = raw_entries
        world = any(isinstance(e, dict) and "key" in e and "keys" not in e for e in items)
    else:
        raise ConfigError("lorebook has no 'entries' list", source)
    if len(items) > MAX_ENTRIES:
        raise ConfigError(f"lorebook has more than {MAX_ENTRIES} entries", source)
    entries: list[LoreEntry] = []
    skipped = 0
    for i, raw in enumerate(items):
        if not isinstance(raw, dict):
            skipped += 1
            continue
        entry = _world_entry(raw, i) if world else _card_entry(raw, i)
        if not entry.content.strip():
            continue
        entries.append(entry)
    book_name = _text(data.get("name")) or name or (Path(source).stem if isinstance(source, Path) else str(source))
    recursive = _bool(data.get("recursive_scanning"), False) is True
    return Lorebook(
        name=book_name,
        entries=tuple(entries),
        scan_depth=_depth(data.get("scan_depth")),
        token_budget=_int(data.get("token_budget"), None),
        recursive=recursive,
        skipped=skipped,
    )


def load_lorebook(path: Path) -> Lorebook:
    """Read a lorebook JSON file (ST world info, V3 lorebook or a bare character_book)."""
    return lorebook_from_bytes(read_capped(path, MAX_BOOK_BYTES, ConfigError, "lorebook file"), path)


def lorebook_from_bytes(raw: bytes, path: Path) -> Lorebook:
    """Parse the bytes of a lorebook JSON file read from ``path``."""
    return parse_lorebook(decode_json(raw, path, ConfigError, "lorebook"), path, path.stem)


def lorebook_from_card(card: Card) -> Lorebook | None:
    """The card's own character_book, or None when it has none (or it cannot be used)."""
    if not isinstance(card.character_book, dict):
        return None
    try:
        book = parse_lorebook(card.character_book, card.name, f"{card.name}'s lorebook")
    except ConfigError:
        return None
    return book if book.entries else None


# --- activation -----------------------------------------------------------------------------------
def _quote(keys: Sequence[str]) -> str:
    return ", ".join(repr(k) for k in keys)


def activate(
    books: Sequence[Lorebook],
    messages: Sequence[str],
    *,
    char: str,
    user: str,
    counter: Callable[[str], int] | None = None,
    budget: int | None = None,
    scan_depth: int | None = None,
    recursive: bool | None = None,
    max_recursion: int = DEFAULT_MAX_RECURSION,
) -> LoreActivation:
    """Find the entries that fire for ``messages`` (oldest first, "Name: text") and place them.

    ``budget`` caps the tokens of placed content (a book's own token_budget is used when
    smaller); entries are admitted highest insertion order first, as SillyTavern does.
    ``recursive`` None uses each book's setting.
    """
    newest = [m for m in reversed(messages)]
    candidates: list[tuple[int, int, Lorebook, LoreEntry, str]] = []
    for b, book in enumerate(books):
        for e, entry in enumerate(book.entries):
            if entry.enabled and entry.force is not False and entry.position != "outlet":
                candidates.append((b, e, book, entry, expand_macros(entry.content, char, user).strip()))
    limits = [book.token_budget for book in books if book.token_budget and book.token_budget > 0]
    if budget is not None:
        limits.append(budget)
    cap = min(limits) if limits else None
    count = counter or (lambda text: max(1, len(text) // 4))
    texts: dict[tuple[int, int], str] = {}

    def haystack(depth: int, buffer: list[str]) -> str:
        # SillyTavern's scan buffer: newest message first, each after "\x01"; then fired content.
        if (depth, len(buffer)) not in texts:
            text = ("\x01" + "\n\x01".join(newest[:depth]))[:MAX_SCAN_CHARS]
            if buffer:
                text = (text + "\n\x01" + "\n\x01".join(buffer))[: 2 * MAX_SCAN_CHARS]
            texts[(depth, len(buffer))] = text
        return texts[(depth, len(buffer))]

    matcher = KeyMatcher()
    fired: dict[tuple[int, int], LoreHit] = {}
    over: list[LoreHit] = []
    used = 0
    buffer: list[str] = []
    step = 0
    overflowed = False
    while True:
        found: list[tuple[int, int, LoreEntry, str, str]] = []
        for b, e, book, entry, content in candidates:
            if (b, e) in fired or (step and entry.exclude_recursion) or (not step and entry.delay_until_recursion):
                continue
            reason = None
            if entry.constant or entry.force:
                reason = "constant" if entry.constant else "@@activate"
            elif entry.keys:
                depth = entry.scan_depth if entry.scan_depth is not None else book.scan_depth
                depth = max(0, min(1000, depth if depth is not None else (scan_depth or DEFAULT_SCAN_DEPTH)))
                text = haystack(depth, buffer)
                reason = _match(matcher, entry, book, text, char, user)
            if reason is not None:
                if step:
                    reason = f"recursion step {step}: {reason}"
                found.append((b, e, entry, content, reason))
        if not found:
            break
        # Budget priority: higher insertion order first, then higher priority, then book order.
        found.sort(key=lambda f: (-f[2].insertion_order, -f[2].priority, f[0], f[1]))
        added: list[str] = []
        for b, e, entry, content, reason in found:
            tokens = count(content) if (cap is not None or counter is not None) else None
            # Unnamed entries (common in cards) are shown by their first key.
            label = entry.name or (entry.keys[0] if entry.keys else f"entry {entry.uid}")
            where = f"at_depth {entry.depth} {entry.role}" if entry.position == "at_depth" else entry.position
            hit = LoreHit(books[b].name, entry.uid, label, where, reason, step, tokens)
            if cap is not None and (overflowed or used + (tokens or 0) > cap):
                overflowed = True
                over.append(hit)
                continue
            used += tokens or 0
            fired[(b, e)] = hit
            if not entry.prevent_recursion:
                added.append(content)
        use_recursion = recursive if recursive is not None else any(book.recursive for book in books)
        if overflowed or not added or not use_recursion or step >= max_recursion:
            break
        buffer += added
        step += 1

    # Placement is by insertion order (then book and entry order), never by when an entry fired,
    # so the prompt text stays stable for the engine's cache.
    order = sorted(fired, key=lambda k: (books[k[0]].entries[k[1]].insertion_order, k[0], k[1]))
    content_of = {(b, e): c for b, e, _, _, c in candidates}

    def placed(*positions: str) -> tuple[str, ...]:
        return tuple(content_of[k] for k in order if fired[k].position in positions)

    # SillyTavern joins the entries of one depth and role into one message.
    groups: dict[tuple[int, str], list[str]] = {}
    for k in order:
        entry = books[k[0]].entries[k[1]]
        if entry.position == "at_depth":
            groups.setdefault((entry.depth, entry.role), []).append(content_of[k])
    return LoreActivation(
        before=placed("before_char"),
        after=placed("after_char", "em_top", "em_bottom"),
        hits=tuple(fired[k] for k in order),
        over_budget=tuple(over),
        budget=cap,
        tokens=used,
        an_top=placed("an_top"),
        an_bottom=placed("an_bottom"),
        at_depth=tuple(DepthInsert(d, r, "\n".join(texts)) for (d, r), texts in groups.items()),
    )


def _match(matcher: KeyMatcher, entry: LoreEntry, book: Lorebook, text: str, char: str, user: str) -> str | None:
    """Why ``entry`` fires on ``text`` (a reason for the inspector), or None."""
    case = entry.case_sensitive if entry.case_sensitive is not None else book.case_sensitive
    whole = entry.whole_words if entry.whole_words is not None else book.whole_words

    def hit(key: str) -> bool:
        key = expand_macros(key, char, user).strip()
        return bool(key) and matcher.matches(text, key, case_sensitive=case, whole_words=whole, regex=entry.use_regex)

    primary = next((k for k in entry.keys if hit(k)), None)
    if primary is None:
        return None
    reason = f"key {primary!r}"
    if not (entry.selective and entry.secondary_keys):
        return reason
    logic = entry.selective_logic
    found = [k for k in entry.secondary_keys if hit(k)]
    missing = [k for k in entry.secondary_keys if k not in found]
    name = LOGIC_NAMES[logic]
    if logic == 0 and found:
        return f"{reason} and secondary {found[0]!r} ({name})"
    if logic == 1 and missing:
        return f"{reason}, secondary {missing[0]!r} absent ({name})"
    if logic == 2 and not found:
        return f"{reason}, none of {_quote(entry.secondary_keys)} ({name})"
    if logic == 3 and not missing:
        return f"{reason} and all of {_quote(entry.secondary_keys)} ({name})"
    return None
