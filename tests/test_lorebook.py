"""Lorebook activation: keys, selective logic, case, whole words, regex, constants, order, position,
scan depth, token budget and recursion, plus reading V2/V3 books and SillyTavern world info."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rpchat.cards.model import Card
from rpchat.chat.model import Chat, Turn
from rpchat.errors import ConfigError
from rpchat.personas import Persona
from rpchat.prompt import build_prompt, load_format
from rpchat.prompt.lorebook import Lorebook, activate, load_lorebook, lorebook_from_card, parse_lorebook
from rpchat.prompt.lorekeys import compile_regex

THEO = Persona("Theo", "A sailor.")


def entry(keys: list[str], content: str, **kw: Any) -> dict[str, Any]:
    """A V2 character_book entry."""
    return {"keys": keys, "content": content, "enabled": True, "insertion_order": 100, **kw}


def book(*entries: dict[str, Any], **kw: Any) -> Lorebook:
    return parse_lorebook({"name": "Test", "entries": list(entries), **kw}, "test")


def fired(lore: Lorebook, *messages: str, **kw: Any) -> list[str]:
    result = activate([lore], list(messages), char="Ada", user="Theo", **kw)
    return [h.name for h in result.hits]


def turns(*texts: str) -> list[Turn]:
    chat = Chat.start("Ada", "Theo", ["Hello."])
    for i, text in enumerate(texts):
        chat.add(i % 2 == 0, text)
    return chat.turns


def test_card_book_fires_and_is_placed_after_the_character() -> None:
    card = Card(
        name="Ada",
        description="An inventor.",
        first_mes="Hello.",
        character_book={"entries": [entry(["dragon"], "Dragons guard {{user}}'s gold.", name="Dragons")]},
    )
    built = build_prompt(load_format("limarp-v3"), card, THEO, turns("I saw a Dragon!"))
    assert "Ada's Persona: An inventor.\n\nDragons guard Theo's gold.\n\nTheo's Persona: A sailor." in built.text
    (hit,) = built.lore_fired
    assert (hit.name, hit.reason, hit.position) == ("Dragons", "key 'dragon'", "after_char")
    # Lore text comes from the card: it is user text, not template.
    assert any(s.kind == "user" and "Dragons guard" in s.text for s in built.segments)
    quiet = build_prompt(load_format("limarp-v3"), card, THEO, turns("Nice weather."))
    assert "Dragons guard" not in quiet.text and quiet.lore_fired == ()


def test_before_char_position_and_limamono_placement() -> None:
    lore = book(
        entry(["gear"], "Before.", position="before_char", name="b"),
        entry(["gear"], "After.", position="after_char", name="a"),
    )
    card = Card(name="Ada", description="An inventor.", scenario="A workshop.")
    v3 = build_prompt(load_format("limarp-v3"), card, THEO, turns("a gear"), lorebook=lore).text
    assert v3.startswith("### Instruction:\nBefore.\n\nAda's Persona: An inventor.\n\nAfter.\n\nTheo's Persona")
    mono = build_prompt(load_format("limamono"), card, THEO, turns("a gear"), lorebook=lore).text
    assert "### Instruction:\nAda\nBefore.\nAn inventor.\nAfter.\nScenario: A workshop.\n" in mono


def test_scan_depth() -> None:
    lore = book(entry(["compass"], "c", name="c"))
    assert fired(lore, "the compass", "a", "b") == []  # default depth: the last 2 messages
    assert fired(lore, "a", "the compass", "b") == ["c"]
    deeper = book(entry(["compass"], "c", name="c"), scan_depth=3)
    assert fired(deeper, "the compass", "a", "b") == ["c"]
    per_entry = book(entry(["compass"], "c", name="c", extensions={"scan_depth": 1}))
    assert fired(per_entry, "a", "the compass", "b") == []


def test_case_sensitivity() -> None:
    assert fired(book(entry(["Rose"], "r", name="r")), "a rose") == ["r"]
    sensitive = book(entry(["Rose"], "r", name="r", case_sensitive=True))
    assert fired(sensitive, "a rose") == []
    assert fired(sensitive, "a Rose") == ["r"]


def test_whole_words() -> None:
    whole = book(entry(["cat"], "c", name="c", extensions={"match_whole_words": True}))
    assert fired(whole, "concatenate") == []
    assert fired(whole, "the cat.") == ["c"]
    assert fired(book(entry(["cat"], "c", name="c")), "concatenate") == ["c"]
    multi = book(entry(["black cat"], "c", name="c", extensions={"match_whole_words": True}))
    assert fired(multi, "a black cats' tale") == ["c"]  # multi-word keys are substrings, as in ST


@pytest.mark.parametrize(
    ("logic", "text", "fires"),
    [
        (0, "sword and fire", True),  # AND ANY
        (0, "sword alone", False),
        (1, "sword fire ice", False),  # NOT ALL: fires unless all secondary keys are present
        (1, "sword fire", True),
        (2, "sword alone", True),  # NOT ANY
        (2, "sword ice", False),
        (3, "sword fire ice", True),  # AND ALL
        (3, "sword fire", False),
        (0, "fire ice", False),  # the primary key is always needed
    ],
)
def test_selective_logic(logic: int, text: str, fires: bool) -> None:
    lore = book(entry(["sword"], "s", name="s", secondary_keys=["fire", "ice"], selective=True,
                      extensions={"selectiveLogic": logic}))
    assert fired(lore, text) == (["s"] if fires else [])


def test_selective_off_ignores_secondary_keys() -> None:
    lore = book(entry(["sword"], "s", name="s", secondary_keys=["fire"], selective=False))
    assert fired(lore, "sword") == ["s"]


def test_reason_names_the_keys() -> None:
    lore = book(entry(["sword"], "s", name="s", secondary_keys=["fire"], extensions={"selectiveLogic": 3}))
    result = activate([lore], ["sword fire"], char="Ada", user="Theo")
    assert result.hits[0].reason == "key 'sword' and all of 'fire' (AND ALL)"


def test_constant_disabled_and_macro_keys() -> None:
    lore = book(
        entry([], "Always.", name="const", constant=True),
        entry(["gold"], "Never.", name="off", enabled=False),
        entry(["{{user}}'s ship"], "Ship.", name="ship"),
    )
    assert fired(lore, "gold") == ["const"]
    assert fired(lore, "Theo: I board Theo's ship") == ["const", "ship"]


def test_insertion_order_is_stable() -> None:
    lore = book(
        entry(["zebra"], "Z", name="z", insertion_order=30),
        entry(["apple"], "A", name="a", insertion_order=10),
        entry(["mango"], "M", name="m", insertion_order=20),
    )
    first = activate([lore], ["zebra mango apple"], char="Ada", user="Theo")
    second = activate([lore], ["apple", "mango zebra"], char="Ada", user="Theo")
    assert first.after == second.after == ("A", "M", "Z")


def test_regex_keys() -> None:
    v3 = book(entry([r"drag(on|oon)s?\b"], "d", name="d", use_regex=True))
    assert fired(v3, "Two DRAGOONS") == ["d"]
    assert fired(v3, "dragonfly") == []
    st = book(entry(["/Theo: .*help/i"], "h", name="h"))
    assert fired(st, "x", "Theo: please HELP") == ["h"]
    assert fired(st, "Ada: help") == []
    named = book(entry([r"(?<word>moon)"], "m", name="m", use_regex=True))
    assert fired(named, "the moon") == ["m"]
    bad = book(entry(["(unclosed"], "u", name="u", use_regex=True))
    assert fired(bad, "(unclosed") == []


def test_catastrophic_regex_is_refused_not_run() -> None:
    lore = book(
        entry([r"(a+)+$"], "x", name="nested", use_regex=True),
        entry(["/(a|aa)*b/"], "y", name="alternation"),
        entry([r"a.*a.*a.*b"], "z", name="many", use_regex=True),
        entry([r"(a)\1"], "w", name="backref", use_regex=True),
    )
    assert fired(lore, "a" * 5000 + "!") == []
    for pattern in (r"(a+)+$", "(a|aa)*b", r"a.*a.*b", r"(a)\1", r"(x*)*"):
        assert compile_regex(pattern) is None, pattern
    for pattern in (r"\bdragons?\b", "(cat|dog)+", r"sword.*fire", r"\d{1,3}"):
        assert compile_regex(pattern) is not None, pattern


def test_token_budget() -> None:
    lore = book(
        entry(["k"], "low " * 40, name="low", insertion_order=1),
        entry(["k"], "high " * 40, name="high", insertion_order=50),
        entry(["k"], "mid " * 40, name="mid", insertion_order=20),
    )
    words = lambda text: len(text.split())
    result = activate([lore], ["k"], char="Ada", user="Theo", counter=words, budget=90)
    assert [h.name for h in result.hits] == ["mid", "high"]  # higher insertion order wins the budget
    assert [h.name for h in result.over_budget] == ["low"]
    assert result.tokens == 80 and result.budget == 90
    # The book's own token_budget applies when smaller.
    small = parse_lorebook({"entries": [entry(["k"], "one two", name="a")], "token_budget": 1}, "t")
    assert activate([small], ["k"], char="Ada", user="Theo", counter=words).hits == ()


def test_budget_from_context_in_the_builder() -> None:
    lore = book(*(entry(["k"], f"fact {i} " + "word " * 30, name=f"e{i}", insertion_order=i) for i in range(10)))
    count = lambda text: -(-len(text) // 4)
    built = build_prompt(load_format("limarp-v3"), Card(name="Ada", description="d"), THEO, turns("k"),
                         lorebook=lore, counter=count, n_ctx=1024, max_new=100)
    assert built.lore is not None and built.lore.budget == 256
    assert 0 < len(built.lore_fired) < 10 and built.lore.over_budget
    assert sum(h.tokens or 0 for h in built.lore_fired) <= 256


def test_recursion() -> None:
    entries = [
        entry(["dragon"], "Dragons fear Excalibur.", name="dragon"),
        entry(["excalibur"], "Excalibur rests in the lake.", name="sword"),
        entry(["lake"], "The lake is cold.", name="lake"),
    ]
    flat = book(*entries)
    assert fired(flat, "a dragon") == ["dragon"]
    deep = book(*entries, recursive_scanning=True)
    result = activate([deep], ["a dragon"], char="Ada", user="Theo")
    assert [(h.name, h.step) for h in result.hits] == [("dragon", 0), ("sword", 1), ("lake", 2)]
    assert result.hits[1].reason == "recursion step 1: key 'excalibur'"
    assert fired(deep, "a dragon", max_recursion=1) == ["dragon", "sword"]
    assert fired(flat, "a dragon", recursive=True) == ["dragon", "sword", "lake"]


def test_recursion_flags() -> None:
    prevent = book(
        entry(["dragon"], "Dragons fear Excalibur.", name="dragon", extensions={"prevent_recursion": True}),
        entry(["excalibur"], "sword", name="sword"),
        recursive_scanning=True,
    )
    assert fired(prevent, "a dragon") == ["dragon"]
    exclude = book(
        entry(["dragon"], "Dragons fear Excalibur.", name="dragon"),
        entry(["excalibur"], "sword", name="sword", extensions={"exclude_recursion": True}),
        recursive_scanning=True,
    )
    assert fired(exclude, "a dragon") == ["dragon"]
    assert fired(exclude, "excalibur") == ["sword"]
    delay = book(
        entry(["dragon"], "Dragons fear Excalibur.", name="dragon"),
        entry(["excalibur"], "sword", name="sword", extensions={"delay_until_recursion": True}),
        recursive_scanning=True,
    )
    assert fired(delay, "excalibur") == []
    assert fired(delay, "dragon") == ["dragon", "sword"]


def test_recursion_loop_ends() -> None:
    loop = book(entry(["a"], "b", name="A"), entry(["b"], "a", name="B"), recursive_scanning=True)
    assert fired(loop, "a", max_recursion=50) == ["A", "B"]


def test_sillytavern_world_info_file(tmp_path: Path) -> None:
    data = {
        "entries": {
            "0": {"uid": 0, "key": ["castle"], "keysecondary": [], "comment": "Castle", "content": "A castle.",
                  "constant": False, "selective": True, "selectiveLogic": 0, "order": 100, "position": 0,
                  "disable": False, "matchWholeWords": True, "caseSensitive": None, "scanDepth": None},
            "1": {"uid": 1, "key": ["moat"], "keysecondary": ["castle"], "comment": "Moat", "content": "A moat.",
                  "selectiveLogic": 2, "order": 5, "position": 1},
            "2": {"uid": 2, "key": ["never"], "comment": "Dice", "content": "x", "useProbability": True,
                  "probability": 0},
            "3": "not an entry",
        }
    }
    path = tmp_path / "Kingdom.json"
    path.write_text(json.dumps(data))
    lore = load_lorebook(path)
    assert lore.name == "Kingdom" and lore.skipped == 1
    assert lore.entries[0].position == "before_char" and lore.entries[1].position == "after_char"
    assert fired(lore, "the castles") == []  # whole words
    assert fired(lore, "the castle and moat") == ["Castle"]  # NOT ANY blocks the moat entry
    assert fired(lore, "a moat") == ["Moat"]
    assert fired(lore, "never") == []


def test_v3_lorebook_file_and_decorators(tmp_path: Path) -> None:
    data = {
        "spec": "lorebook_v3",
        "data": {
            "name": "Stars",
            "entries": [
                {"keys": ["star"], "content": "@@activate\nAlways here.", "enabled": True, "insertion_order": 1,
                 "use_regex": False, "extensions": {}, "name": "forced"},
                {"keys": ["star"], "content": "@@dont_activate\nNever.", "enabled": True, "insertion_order": 2,
                 "use_regex": False, "extensions": {}, "name": "blocked"},
                {"keys": [r"\bst.r\b"], "content": "Regex.", "enabled": True, "insertion_order": 3,
                 "use_regex": True, "extensions": {}, "name": "regex"},
            ],
        },
    }
    path = tmp_path / "stars.json"
    path.write_text(json.dumps(data))
    lore = load_lorebook(path)
    assert lore.name == "Stars"
    result = activate([lore], ["nothing"], char="Ada", user="Theo")
    assert [h.name for h in result.hits] == ["forced"] and result.after == ("Always here.",)
    assert fired(lore, "star") == ["forced", "regex"]


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"{not json", "not a JSON lorebook"),
        (b"[1, 2]", "JSON object"),
        (b'{"entries": 5}', "no 'entries'"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[" * 10000 + b"]" * 10000, "nested too deeply"),
    ],
)
def test_bad_lorebook_files(tmp_path: Path, raw: bytes, problem: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as info:
        load_lorebook(path)
    assert problem in str(info.value) and str(path) in str(info.value)


def test_hostile_entry_fields_are_survived() -> None:
    lore = parse_lorebook(
        {"entries": [{"keys": "a,b", "content": 5}, {"keys": [1, None, "x"], "content": "X", "insertion_order": "9",
                      "extensions": [], "secondary_keys": {"a": 1}, "position": 7}, None]},
        "t",
    )
    assert [e.keys for e in lore.entries] == [("x",)]
    assert lore.entries[0].insertion_order == 100 and lore.entries[0].position == "after_char"
    assert fired(lore, "x") == ["x"]  # unnamed: shown by its first key


def test_card_without_or_with_broken_book() -> None:
    assert lorebook_from_card(Card(name="A")) is None
    assert lorebook_from_card(Card(name="A", character_book={"entries": "nope"})) is None
    card = Card(name="A", character_book={"entries": "nope"})
    assert build_prompt(load_format("limarp-v3"), card, THEO, []).lore is None


def test_card_book_and_world_info_together() -> None:
    card = Card(name="Ada", description="d", character_book={"entries": [entry(["gear"], "Card gear.", name="cg",
                                                                                insertion_order=2)]})
    world = book(entry(["gear"], "World gear.", name="wg", insertion_order=1))
    built = build_prompt(load_format("limarp-v3"), card, THEO, turns("gear"), lorebook=[world])
    assert "World gear.\nCard gear." in built.text
    assert [h.book for h in built.lore_fired] == ["Test", "Ada's lorebook"]


def test_absurd_books(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    path.write_text(json.dumps({"entries": [{"keys": ["k"], "content": "c"}] * 10_001}))
    with pytest.raises(ConfigError, match="more than"):
        load_lorebook(path)
    odd = tmp_path / "odd.json"
    odd.write_text('{"entries": [{"keys": ["k"], "content": "c", "insertion_order": NaN, "priority": Infinity,'
                   ' "extensions": {"scan_depth": -5, "selectiveLogic": 99}}]}')
    lore = load_lorebook(odd)
    assert lore.entries[0].insertion_order == 100 and lore.entries[0].selective_logic == 0
    assert fired(lore, "k") == ["k"]
    with pytest.raises(ConfigError, match="no such lorebook file"):
        load_lorebook(tmp_path / "missing.json")
