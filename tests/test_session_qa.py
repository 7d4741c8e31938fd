"""Session bugs found in the QA pass: a failed save must not leave the chat in memory half-changed."""

from __future__ import annotations

from pathlib import Path

import pytest
from session_support import make_card

from rpchat.errors import ChatError
from rpchat.personas import PersonaBook
from rpchat.session import open_chat_session


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RPCHAT_HOME", str(tmp_path))
    return tmp_path


def test_send_that_cannot_be_saved_is_not_kept_so_a_retry_does_not_duplicate(home: Path) -> None:
    s = open_chat_session(make_card(home), personas=PersonaBook())
    before = len(s.chat.turns)
    s.path.unlink()
    s.path.mkdir()  # the chat file's place is taken: every save fails
    with pytest.raises(ChatError):
        s.send("hello")
    assert len(s.chat.turns) == before
    s.path.rmdir()
    s.send("hello")
    assert [t.text for t in s.chat.turns].count("hello") == 1


def test_delete_that_cannot_be_saved_keeps_the_turn(home: Path) -> None:
    s = open_chat_session(make_card(home), personas=PersonaBook())
    s.send("keep me")
    s.path.unlink()
    s.path.mkdir()
    with pytest.raises(ChatError):
        s.delete(1)
    assert s.chat.turns[1].text == "keep me"


@pytest.mark.parametrize("mode", ["reply", "regenerate", "continue"])
def test_reply_that_cannot_open_its_turn_on_disk_leaves_the_chat_as_it_was(
    home: Path, tiny_model: Path, mode: str
) -> None:
    import copy
    import threading

    from session_support import tiny_config

    from rpchat.engine.factory import make_engine

    config = tiny_config(tiny_model)
    engine = make_engine(config)
    engine.load()
    s = open_chat_session(make_card(home), config=config, personas=PersonaBook(), engine=engine)
    try:
        s.send("hello")
        if mode != "reply":
            s.reply(lambda _piece: None, threading.Event(), "reply")
        before = copy.deepcopy(s.chat.turns)
        s.path.unlink()
        s.path.mkdir()
        with pytest.raises(ChatError):
            s.reply(lambda _piece: None, threading.Event(), mode)  # type: ignore[arg-type]
        assert s.chat.turns == before
    finally:
        s.close()


def _tiny_session(home: Path, tiny_model: Path, *, n_ctx: int, max_new: int):  # type: ignore[no-untyped-def]
    import dataclasses

    from session_support import tiny_config

    from rpchat.engine.factory import make_engine

    config = tiny_config(tiny_model, max_new=max_new)
    config.engine = dataclasses.replace(config.engine, n_ctx=n_ctx)
    engine = make_engine(config)
    engine.load()
    return open_chat_session(make_card(home), config=config, personas=PersonaBook(), engine=engine)


def test_reply_budget_shrinks_to_the_room_left_in_the_context(home: Path, tiny_model: Path) -> None:
    s = _tiny_session(home, tiny_model, n_ctx=512, max_new=400)
    try:
        s.send("the " * 40)
        built = s.build()
        assert built.n_tokens is not None and built.n_tokens + 400 > 512  # the full budget cannot fit
        result = s.reply(lambda _piece: None)
        assert result.error is None, result.error
        assert result.tokens_generated <= 512 - built.n_tokens
    finally:
        s.close()


def test_a_last_exchange_that_fills_the_context_is_a_clear_error_not_a_failed_decode(
    home: Path, tiny_model: Path
) -> None:
    s = _tiny_session(home, tiny_model, n_ctx=512, max_new=400)
    try:
        s.send("lighthouse " * 400)
        turns = len(s.chat.turns)
        result = s.reply(lambda _piece: None)
        assert result.finish_reason == "error"
        assert result.error is not None and "context holds 512" in result.error and "n_ctx" in result.error
        assert len(s.chat.turns) == turns  # no empty character turn was added
    finally:
        s.close()
