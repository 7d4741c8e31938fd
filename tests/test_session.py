"""RoleplaySession, headless, with the real llama.cpp engine on the tiny test model."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from session_support import make_card, tiny_config

from rpchat.chat.store import load_chat
from rpchat.config import Config
from rpchat.engine.base import Result
from rpchat.engine.factory import make_engine
from rpchat.errors import ChatError, EngineError
from rpchat.personas import PersonaBook
from rpchat.session import RoleplaySession, open_chat_session


@pytest.fixture
def session(tmp_path: Path, tiny_model: Path) -> Iterator[RoleplaySession]:
    config = tiny_config(tiny_model)
    engine = make_engine(config)
    engine.load()
    s = open_chat_session(make_card(tmp_path), config=config, personas=PersonaBook(), engine=engine)
    yield s
    s.close()


def on_disk(s: RoleplaySession):  # type: ignore[no-untyped-def]
    return load_chat(s.path)


def test_new_chat_starts_with_greeting_and_alternates_saved(session: RoleplaySession) -> None:
    chat = on_disk(session)
    assert len(chat.turns) == 1
    greeting = chat.turns[0]
    assert not greeting.is_user
    assert greeting.swipes == ['*throws a blanket over User.* "Up you get."', '"Another one from the sea," she sighs.']
    assert chat.length == "medium"
    assert chat.persona == "User"


def test_send_then_reply_streams_and_saves(session: RoleplaySession) -> None:
    session.send("  Where am I?  ")
    assert on_disk(session).turns[-1].text == "Where am I?"
    pieces: list[str] = []
    result = session.reply(pieces.append, threading.Event())
    assert result.finish_reason in ("length", "stop", "eos")
    assert result.tokens_generated > 0
    chat = on_disk(session)
    assert len(chat.turns) == 3
    reply = chat.turns[-1]
    assert not reply.is_user and not reply.unfinished
    assert reply.text == "".join(pieces).strip()
    assert session.last_result is result


def test_reply_is_on_disk_unfinished_while_generating(session: RoleplaySession) -> None:
    session.send("Hello")
    seen: list[tuple[int, bool, bool]] = []

    def on_piece(piece: str) -> None:
        if not seen:
            chat = on_disk(session)
            seen.append((len(chat.turns), chat.turns[-1].is_user, chat.turns[-1].unfinished))

    session.reply(on_piece)
    assert seen == [(3, False, True)]
    assert not on_disk(session).turns[-1].unfinished


def test_cancel_keeps_partial_reply_marked_unfinished(session: RoleplaySession) -> None:
    session.send("Hello")
    cancel = threading.Event()
    pieces: list[str] = []

    def on_piece(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()

    result = session.reply(on_piece, cancel)
    assert result.finish_reason == "cancelled"
    reply = on_disk(session).turns[-1]
    assert reply.unfinished
    assert reply.text == "".join(pieces).strip()
    # Reopened (after a quit), the cut-off reply is still marked, and the user can drop it.
    again = open_chat_session(session.card_path, session.path, config=Config(), personas=PersonaBook())
    assert again.chat.turns[-1].unfinished
    again.delete(len(again.chat.turns) - 1)
    assert on_disk(session).turns[-1].text == "Hello"


def test_regenerate_cancelled_before_its_first_token_drops_the_new_swipe(session: RoleplaySession) -> None:
    session.send("Hello")
    cancel = threading.Event()
    seen: list[str] = []

    def cut_after_three(piece: str) -> None:
        seen.append(piece)
        if len(seen) == 3:
            cancel.set()

    session.reply(lambda _p: None)
    session.reply(cut_after_three, cancel, "regenerate")  # swipe 2: cut off, marked unfinished
    cut = on_disk(session).turns[-1]
    assert (len(cut.swipes), cut.swipe_id, cut.unfinished) == (2, 1, True)
    stop = threading.Event()
    stop.set()
    assert session.reply(lambda _p: None, stop, "regenerate").finish_reason == "cancelled"
    for turn in (session.chat.turns[-1], on_disk(session).turns[-1]):
        assert turn.swipes == cut.swipes and turn.swipe_id == 1 and turn.unfinished


def test_cancel_before_first_token_leaves_no_empty_turn(session: RoleplaySession) -> None:
    session.send("Hello")
    cancel = threading.Event()
    cancel.set()
    result = session.reply(lambda p: None, cancel)
    assert result.finish_reason == "cancelled"
    turns = on_disk(session).turns
    assert len(turns) == 2 and turns[-1].is_user


def test_regenerate_adds_swipe_and_swipes_move(session: RoleplaySession) -> None:
    session.send("Hello")
    session.reply(lambda p: None)
    first = on_disk(session).turns[-1].text
    session.reply(lambda p: None, mode="regenerate")
    turn = on_disk(session).turns[-1]
    assert len(turn.swipes) == 2 and turn.swipe_id == 1 and turn.swipes[0] == first
    assert len(on_disk(session).turns) == 3
    assert session.swipe(-1) == "moved"
    assert on_disk(session).turns[-1].swipe_id == 0
    assert session.swipe(-1) == "none"
    assert session.swipe(1) == "moved"
    # Past the last swipe the caller must generate a new one, as SillyTavern does.
    assert session.swipe(1) == "generate"


def test_greeting_swipes_are_alternate_greetings_and_wrap(session: RoleplaySession) -> None:
    assert session.swipe(1) == "moved"
    assert on_disk(session).turns[0].text.startswith('"Another one')
    assert session.swipe(1) == "moved"
    assert on_disk(session).turns[0].swipe_id == 0
    with pytest.raises(ChatError):
        session.reply(lambda p: None, mode="regenerate")


def test_continue_appends_to_last_reply(session: RoleplaySession) -> None:
    session.send("Hello")
    session.reply(lambda p: None)
    before = on_disk(session).turns[-1].text
    pieces: list[str] = []
    session.reply(pieces.append, mode="continue")
    after = on_disk(session).turns[-1]
    assert after.text.startswith(before)
    assert after.text == (before + "".join(pieces)).rstrip()
    assert len(after.swipes) == 1


def test_impersonate_returns_text_and_saves_nothing(session: RoleplaySession) -> None:
    session.send("Hello")
    session.reply(lambda p: None)
    before = session.path.read_bytes()
    pieces: list[str] = []
    result = session.reply(pieces.append, mode="impersonate")
    assert result.text == "".join(pieces)
    assert session.path.read_bytes() == before


def test_edit_delete_branch_are_saved(session: RoleplaySession) -> None:
    session.send("Hello")
    session.reply(lambda p: None)
    session.edit(1, "Hello [bold red]there")
    assert on_disk(session).turns[1].text == "Hello [bold red]there"
    branch = session.branch(1)
    assert branch.path != session.path and branch.path.exists()
    branched = load_chat(branch.path)
    assert [t.text for t in branched.turns] == [t.text for t in on_disk(session).turns[:2]]
    assert branched.metadata["rpchat"]["parent"]["turn"] == 1
    session.delete(2)
    assert len(on_disk(session).turns) == 2
    with pytest.raises(ChatError):
        session.delete(9)


def test_length_cycles_and_is_remembered(session: RoleplaySession) -> None:
    assert session.length == "medium"
    assert session.cycle_length() == "long"
    assert on_disk(session).length == "long"
    seen = {session.cycle_length() for _ in session.lengths}
    assert None in seen and "unlimited" in seen
    with pytest.raises(ChatError):
        session.set_length("gigantic")


def test_length_cycle_follows_the_format_so_every_choice_builds(session: RoleplaySession) -> None:
    from rpchat.prompt import load_format

    session.fmt = load_format("limamono")  # trained on micro ... huge only
    seen = []
    for _ in range(len(session.lengths)):
        seen.append(session.cycle_length())
        session.build()  # an untrained length would raise ConfigError here
    assert set(seen) == {None, "micro", "tiny", "short", "medium", "long", "massive", "huge"}
    with pytest.raises(ChatError):
        session.set_length("enormous")


def test_build_fits_context_with_engine_counts(tmp_path: Path, tiny_model: Path) -> None:
    config = tiny_config(tiny_model)
    config.engine.n_ctx = 512
    engine = make_engine(config)
    engine.load()
    s = open_chat_session(make_card(tmp_path), config=config, personas=PersonaBook(), engine=engine)
    for i in range(40):
        s.chat.add(i % 2 == 0, f"Turn {i}: the island and the beach and the world.")
    built = s.build("reply")
    assert built.n_tokens is not None and built.n_tokens <= engine.n_ctx - s.max_new
    assert built.first_kept is not None and 0 < built.first_kept < 40
    assert built.dropped and built.dropped[0] == 0
    s.close()


class FailingEngine:
    """The real engine, failing after two pieces (as a dying remote server does)."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.n_ctx = inner.n_ctx

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def stream(self, prompt, sampling, stop=(), cancel=None, progress=None):  # type: ignore[no-untyped-def]
        inner = self.inner.stream(prompt, sampling, stop, cancel)

        class Gen:
            result = Result()

            def __iter__(self):  # type: ignore[no-untyped-def]
                for i, piece in enumerate(inner):
                    if i == 2:
                        raise EngineError("server closed the connection", "http://127.0.0.1:9")
                    yield piece

            def close(self) -> None:
                inner.close()

        return Gen()

    def close(self) -> None:
        self.inner.close()


def test_engine_failure_keeps_partial_reply(session: RoleplaySession) -> None:
    session.engine = FailingEngine(session.engine)  # type: ignore[assignment]
    session.send("Hello")
    pieces: list[str] = []
    result = session.reply(pieces.append)
    assert result.finish_reason == "error" and "server closed" in (result.error or "")
    reply = on_disk(session).turns[-1]
    assert reply.unfinished and reply.text == "".join(pieces).strip()


def test_reply_without_engine_is_an_engine_error(tmp_path: Path, tiny_model: Path) -> None:
    s = open_chat_session(make_card(tmp_path), config=tiny_config(tiny_model), personas=PersonaBook())
    s.send("Hello")
    with pytest.raises(EngineError):
        s.reply(lambda p: None)
    assert len(on_disk(s).turns) == 2


def test_open_chat_session_creates_a_missing_chat_file_and_resumes_it(tmp_path: Path, tiny_model: Path) -> None:
    chat_path = tmp_path / "chat.jsonl"
    config = tiny_config(tiny_model, max_new=8)
    engine = make_engine(config, n_ctx=512)
    engine.load()
    with pytest.raises(ChatError, match="chat.jsonl"):
        open_chat_session(make_card(tmp_path), chat_path, config=config, personas=PersonaBook())  # the app's way
    s = open_chat_session(make_card(tmp_path), chat_path, config=config, personas=PersonaBook(), engine=engine,
                          user="Theo", create_missing=True)  # `rpchat reply`'s way
    try:
        assert load_chat(chat_path).turns[0].text.startswith("*throws a blanket over Theo")
        s.send("Hi")
        result = s.reply(lambda p: None)
        assert result.tokens_generated > 0
        assert len(load_chat(chat_path).turns) == 3
    finally:
        s.close()
    # Resuming the same file continues it, as the same persona.
    s2 = open_chat_session(make_card(tmp_path), chat_path, config=config, personas=PersonaBook())
    assert len(s2.chat.turns) == 3 and s2.persona.name == "Theo"


def test_session_is_headless() -> None:
    import subprocess
    import sys

    code = (
        "import sys, rpchat.session, rpchat.chat.store, rpchat.prompt, rpchat.engine.presets;"
        "print('textual' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert done.stdout.strip() == "False"
