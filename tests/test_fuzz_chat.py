"""Property tests for chat files beyond test_chat_property.py (which covers parse/dump round trips and
arbitrary bytes): torn last lines are recovered, ChatStore.open never loses a byte of what it was given,
and any sequence of chat operations, saves and outside writes keeps the file and the user's version."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from test_chat_property import chats

from rpchat.chat import Chat, ChatConflictError, ChatStore, dump_chat, load_chat, parse_chat
from rpchat.errors import ChatError

SOURCE = Path("fuzz.jsonl")
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
texts = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=30)


def cut_inside_last_line(data: bytes, where: int) -> bytes:
    start = data.rindex(b"\n") + 1
    return data[: start + 1 + where % (len(data) - start - 1)]


@settings(FUZZ, max_examples=60)
@given(chats().filter(lambda c: len(c.turns) >= 1), st.integers(0, 10**9))
def test_a_torn_last_line_loses_only_that_turn(chat: Chat, where: int) -> None:
    data = dump_chat(chat)
    torn = cut_inside_last_line(data, where)
    if torn.decode("utf-8", "ignore").encode() != torn:
        # A cut inside a multi-byte character: covered by the example test below.
        return
    back = parse_chat(torn, SOURCE)
    assert back.turns == chat.turns[:-1]
    assert back.warnings and "torn" in back.warnings[0]


def test_a_last_line_torn_inside_a_multibyte_character_is_recovered() -> None:
    chat = Chat.start("Zoë", "Théo", ["Bonjour"])
    chat.add(True, "Ça va? ✨✨✨")
    data = dump_chat(chat)
    torn = data[: data.index("✨".encode()) + 1]
    back = parse_chat(torn, SOURCE)
    assert back.turns == chat.turns[:-1] and back.warnings


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@settings(FUZZ, max_examples=80)
@given(st.one_of(
    st.binary(max_size=300),
    chats().map(dump_chat),
    st.tuples(chats().map(dump_chat), st.integers(0, 10**9), st.integers(0, 255)).map(
        lambda t: t[0][: t[1] % (len(t[0]) + 1)] + bytes([t[2]])),
))
def test_store_open_never_loses_the_bytes_it_was_given(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "chat.jsonl"
        path.write_bytes(data)
        try:
            chat = ChatStore(path).open()
        except ChatError as e:
            assert "\n" not in str(e) and str(path) in str(e)
            files = folder_bytes(Path(d))
            # A bad file is moved aside whole, never overwritten or dropped.
            assert list(files.values()) == [data] and next(iter(files)).startswith("chat.corrupt-")
            return
        files = folder_bytes(Path(d))
        now = files.pop("chat.jsonl")
        if chat.warnings:
            # Lines that do not read are left out: the original is kept aside, the file holds the rest.
            assert list(files.values()) == [data] and now == dump_chat(chat)
        else:
            assert files == {} and now == data  # a good file is never rewritten by opening it


class ChatFileMachine(RuleBasedStateMachine):
    """Random edits, saves and outside writes on one chat file: the file always loads as the last
    successful save, and a save over an outside change keeps both versions."""

    @initialize(greetings=st.lists(texts, min_size=1, max_size=3))
    def start(self, greetings: list[str]) -> None:
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "c.jsonl"
        self.chat = Chat.start("Marisol", "Theo", greetings)
        self.store = ChatStore(self.path)
        self.store.save(self.chat)
        self.saved = dump_chat(self.chat)

    def teardown(self) -> None:
        self.dir.cleanup()

    @rule(is_user=st.booleans(), text=texts)
    def add(self, is_user: bool, text: str) -> None:
        self.chat.add(is_user, text)

    @precondition(lambda self: self.chat.turns)
    @rule(data=st.data(), text=texts)
    def edit(self, data: st.DataObject, text: str) -> None:
        self.chat.edit(data.draw(st.integers(0, len(self.chat.turns) - 1)), text)

    @precondition(lambda self: self.chat.turns)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        self.chat.delete(data.draw(st.integers(0, len(self.chat.turns) - 1)))

    @precondition(lambda self: self.chat.turns)
    @rule(data=st.data(), text=texts, unfinished=st.booleans())
    def swipe(self, data: st.DataObject, text: str, unfinished: bool) -> None:
        index = data.draw(st.integers(0, len(self.chat.turns) - 1))
        self.chat.add_swipe(index, text)
        self.chat.mark_unfinished(index, unfinished)
        self.chat.select_swipe(index, data.draw(st.integers(-1, 5)))

    @rule()
    def save(self) -> None:
        self.store.save(self.chat)
        self.saved = dump_chat(self.chat)

    @rule(text=texts)
    def outside_write_then_save(self, text: str) -> None:
        other = load_chat(self.path)
        other.add(True, f"from another program: {text}")
        other_bytes = dump_chat(other)
        self.path.write_bytes(other_bytes)
        with pytest.raises(ChatConflictError) as info:
            self.store.save(self.chat)
        assert self.path.read_bytes() == other_bytes  # the other program's version is untouched
        assert parse_chat(info.value.conflict_path.read_bytes(), "x").turns == self.chat.turns  # ours is kept
        # Reloading takes the file as it is now and saving works again.
        self.chat = self.store.reload()
        self.saved = other_bytes

    @invariant()
    def file_is_the_last_save(self) -> None:
        if hasattr(self, "path"):
            assert self.path.read_bytes() == self.saved
            assert dump_chat(load_chat(self.path)) == self.saved
            assert list(Path(self.dir.name).glob(".*.tmp")) == []


TestChatFileMachine = ChatFileMachine.TestCase
TestChatFileMachine.settings = settings(FUZZ, max_examples=60, stateful_step_count=20)
