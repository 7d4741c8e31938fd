"""Property tests: any chat survives save/load, and no byte string makes the loader misbehave."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpchat.chat import Chat, Turn, dump_chat, parse_chat
from rpchat.errors import ChatError

SOURCE = Path("prop.jsonl")

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# Text with the characters that break naive JSONL code: newlines, \r, U+2028, NUL, quotes.
texts = st.text(alphabet=st.characters(exclude_categories=("Cs",)) | st.sampled_from('\n\r\u2028\x00"\\'))
unknown_keys = st.text(min_size=1, max_size=10)


@st.composite
def turns(draw: st.DrawFn) -> Turn:
    swipes = draw(st.lists(texts, min_size=1, max_size=4))
    extra = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3))
    if draw(st.booleans()):
        extra["rpchat"] = {"unfinished": draw(st.lists(st.integers(0, len(swipes) - 1), max_size=2))}
    unknown = draw(st.dictionaries(unknown_keys, json_values, max_size=3))
    for key in ("name", "is_user", "send_date", "mes", "extra", "swipes", "swipe_id", "swipe_info"):
        unknown.pop(key, None)
    return Turn(
        is_user=draw(st.booleans()),
        name=draw(texts),
        swipes=swipes,
        swipe_id=draw(st.integers(0, len(swipes) - 1)),
        send_date=draw(texts),
        extra=extra,
        swipe_info=draw(st.lists(json_values, max_size=3)),
        unknown=unknown,
    )


@st.composite
def chats(draw: st.DrawFn) -> Chat:
    metadata = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4))
    unknown = draw(st.dictionaries(unknown_keys, json_values, max_size=3))
    for key in ("user_name", "character_name", "create_date", "chat_metadata", "mes"):
        unknown.pop(key, None)
    return Chat(
        user_name=draw(texts),
        character_name=draw(texts),
        turns=draw(st.lists(turns(), max_size=6)),
        create_date=draw(texts),
        metadata=metadata,
        unknown=unknown,
    )


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chats())
def test_save_load_round_trip(chat: Chat) -> None:
    data = dump_chat(chat)
    back = parse_chat(data, SOURCE)
    assert back == chat
    assert back.warnings == []
    assert dump_chat(back) == data  # stable: saving a loaded chat changes no byte
    assert data.count(b"\n") == len(chat.turns)  # one line per message, whatever the text holds


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_load_or_raise_chat_error(data: bytes) -> None:
    try:
        parse_chat(data, SOURCE)
    except ChatError as exc:
        assert "\n" not in str(exc) and str(SOURCE) in str(exc)


@settings(max_examples=300, deadline=None)
@given(st.lists(json_values, min_size=1, max_size=5), st.booleans())
def test_arbitrary_json_lines_load_or_raise_chat_error(lines: list[object], tear: bool) -> None:
    data = "\n".join(json.dumps(x) for x in lines).encode()
    if tear:
        data = data[: len(data) * 2 // 3]
    try:
        chat = parse_chat(data, SOURCE)
    except ChatError as exc:
        assert "\n" not in str(exc)
        return
    # Whatever loads can be written back and loads the same.
    assert parse_chat(dump_chat(chat), SOURCE) == chat


@settings(max_examples=120, deadline=None)
@given(chats(), st.data())
def test_mutated_valid_files_load_or_raise_chat_error(chat: Chat, data: st.DataObject) -> None:
    raw = bytearray(dump_chat(chat))
    for _ in range(data.draw(st.integers(1, 4))):
        if not raw:
            break
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        parse_chat(bytes(raw[:cut]), SOURCE)
    except ChatError as exc:
        assert "\n" not in str(exc)


def _apply(chat: Chat, op: str, n: int, text: str) -> None:
    """One of the chat's own operations on turn ``n`` (modulo the turns there are)."""
    if op == "add":
        chat.add(n % 2 == 0, text)
        return
    if op == "rename":
        chat.rename_user(text)
        chat.rename_character(text + "!")
        return
    if op == "settings":
        chat.worlds, chat.length, chat.scenario, chat.use_card_lorebook = [text], text, text, False
        return
    if not chat.turns:
        return
    i = n % len(chat.turns)
    if op == "edit":
        chat.edit(i, text)
    elif op == "delete":
        chat.delete(i)
    elif op == "swipe":
        chat.add_swipe(i, text)
        chat.mark_unfinished(i)
    elif op == "remove_swipe":
        chat.remove_swipe(i)
    elif op == "select":
        chat.select_swipe(i, n)
    elif op == "hide":
        chat.turns[i].hidden = True


operations = st.lists(
    st.tuples(
        st.sampled_from(["add", "rename", "settings", "edit", "delete", "swipe", "remove_swipe", "select", "hide"]),
        st.integers(0, 20),
        texts,
    ),
    max_size=8,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chats(), operations)
def test_restore_puts_the_chat_back_exactly_with_the_same_turn_objects(
    chat: Chat, ops: list[tuple[str, int, str]]
) -> None:
    before, turns = dump_chat(chat), list(chat.turns)
    snapshot = chat.snapshot()
    for op, n, text in ops:
        _apply(chat, op, n, text)
    chat.restore(snapshot)
    assert dump_chat(chat) == before
    assert len(chat.turns) == len(turns) and all(a is b for a, b in zip(chat.turns, turns, strict=True))
