"""Session bugs found in the QA pass: a failed save must not leave the chat in memory half-changed."""

from __future__ import annotations

from pathlib import Path

import pytest
from session_support import make_card

from rpchat.chat.model import AuthorsNote
from rpchat.chat.store import load_chat
from rpchat.errors import ChatError
from rpchat.personas import Persona, PersonaBook
from rpchat.session import open_chat_session


def test_send_that_cannot_be_saved_is_not_kept_so_a_retry_does_not_duplicate(tmp_path: Path) -> None:
    s = open_chat_session(make_card(tmp_path), personas=PersonaBook())
    before = len(s.chat.turns)
    s.path.unlink()
    s.path.mkdir()  # the chat file's place is taken: every save fails
    with pytest.raises(ChatError):
        s.send("hello")
    assert len(s.chat.turns) == before
    s.path.rmdir()
    s.send("hello")
    assert [t.text for t in s.chat.turns].count("hello") == 1


def test_delete_that_cannot_be_saved_keeps_the_turn(tmp_path: Path) -> None:
    s = open_chat_session(make_card(tmp_path), personas=PersonaBook())
    s.send("keep me")
    s.path.unlink()
    s.path.mkdir()
    with pytest.raises(ChatError):
        s.delete(1)
    assert s.chat.turns[1].text == "keep me"


@pytest.mark.parametrize("mode", ["reply", "regenerate", "continue"])
def test_reply_that_cannot_open_its_turn_on_disk_leaves_the_chat_as_it_was(
    tmp_path: Path, tiny_model: Path, mode: str
) -> None:
    import copy
    import threading

    from session_support import tiny_config

    from rpchat.engine.factory import make_engine

    config = tiny_config(tiny_model)
    engine = make_engine(config)
    engine.load()
    s = open_chat_session(make_card(tmp_path), config=config, personas=PersonaBook(), engine=engine)
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


def test_reply_budget_shrinks_to_the_room_left_in_the_context(tmp_path: Path, tiny_model: Path) -> None:
    s = _tiny_session(tmp_path, tiny_model, n_ctx=512, max_new=400)
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
    tmp_path: Path, tiny_model: Path
) -> None:
    s = _tiny_session(tmp_path, tiny_model, n_ctx=512, max_new=400)
    try:
        s.send("lighthouse " * 400)
        turns = len(s.chat.turns)
        result = s.reply(lambda _piece: None)
        assert result.finish_reason == "error"
        assert result.error is not None and "context holds 512" in result.error and "n_ctx" in result.error
        assert len(s.chat.turns) == turns  # no empty character turn was added
    finally:
        s.close()


# --- every change to the chat: saved, or the chat in memory is exactly as it was -------------------------

def _break_by_directory(s) -> None:  # type: ignore[no-untyped-def]
    s.path.unlink()
    s.path.mkdir()  # the chat file's place is taken (a sync tool, a user's mistake): every save fails


def _break_by_another_program(s) -> None:  # type: ignore[no-untyped-def]
    # SillyTavern (or an editor) rewrote the file meanwhile: rpchat refuses to overwrite it.
    s.path.write_bytes(s.path.read_bytes() + b"\n")


MUTATIONS = {
    "send": lambda s, w: s.send("hello again"),
    "edit": lambda s, w: s.edit(1, "changed"),
    "delete": lambda s, w: s.delete(1),
    "hide": lambda s, w: s.set_hidden(1, True),
    "swipe": lambda s, w: s.swipe(1),
    "set_length": lambda s, w: s.set_length(next(v for v in s.lengths if v != s.chat.length)),
    "cycle_length": lambda s, w: s.cycle_length(),
    "set_persona": lambda s, w: s.set_persona(Persona("Theo", "a castaway")),
    "set_scenario": lambda s, w: s.set_scenario("A storm rolls in."),
    "set_note": lambda s, w: s.set_note(AuthorsNote(text="It is raining.", depth=2)),
    "attach_world": lambda s, w: s.attach_world(w),
    "detach_world": lambda s, w: s.detach_world("Kraken"),
    "card_lorebook": lambda s, w: s.set_card_lorebook(False),
    "chat_banned": lambda s, w: s.set_chat_banned(["ministrations"]),
}


BREAKS = {"directory": _break_by_directory, "conflict": _break_by_another_program}


@pytest.mark.parametrize("how", BREAKS)
@pytest.mark.parametrize("mutation", MUTATIONS)
def test_a_change_that_cannot_be_saved_leaves_the_chat_exactly_as_it_was(tmp_path: Path, mutation: str, how: str) -> None:
    from session_support import write_world

    from rpchat.chat.store import dump_chat

    s = open_chat_session(make_card(tmp_path), personas=PersonaBook())
    s.attach_world(write_world(tmp_path / "kraken.json", key="kraken", name="Kraken"))
    s.send("Where am I?")
    if mutation == "swipe":
        s.delete(1)  # the greeting is last again: its alternate greeting is a swipe away
    before, turns, persona = dump_chat(s.chat), list(s.chat.turns), s.persona
    BREAKS[how](s)
    with pytest.raises(ChatError) as failed:
        MUTATIONS[mutation](s, write_world(tmp_path / "gull.json"))
    assert "\n" not in str(failed.value) and str(s.path) in str(failed.value)
    assert dump_chat(s.chat) == before
    assert all(a is b for a, b in zip(s.chat.turns, turns, strict=True))  # the screen holds these objects
    assert s.persona == persona
    if how == "directory":
        s.path.rmdir()
        MUTATIONS[mutation](s, tmp_path / "gull.json")  # the cause gone, the same change is saved once
        assert dump_chat(load_chat(s.path)) == dump_chat(s.chat) != before


def test_a_branch_keeps_the_banned_phrases_and_model_choices_the_session_opened_with(tmp_path: Path) -> None:
    from rpchat.config import Config

    config = Config(banned_phrases=["ministrations"])
    s = open_chat_session(make_card(tmp_path), config=config, personas=PersonaBook())
    s.banned_phrases = (*s.banned_phrases, "a shiver ran down")  # `rpchat reply --ban`
    s.send("hello")
    branch = s.branch(1)
    assert branch.path != s.path and [t.text for t in branch.chat.turns] == [t.text for t in s.chat.turns]
    # The branch's next reply bans what the parent's would have, and says why it picked its format.
    assert branch.all_banned() == s.all_banned() == ("ministrations", "a shiver ran down")
    assert branch.choices == s.choices is not None
    branch.send("only in the branch")
    assert len(s.chat.turns) == 2 and len(load_chat(s.path).turns) == 2


def test_a_reply_whose_last_save_fails_shows_what_the_file_holds(tmp_path: Path, tiny_model: Path) -> None:
    import threading

    from session_support import tiny_config

    from rpchat.chat.store import dump_chat, parse_chat
    from rpchat.engine.factory import make_engine

    config = tiny_config(tiny_model)
    engine = make_engine(config)
    engine.load()
    s = open_chat_session(make_card(tmp_path), config=config, personas=PersonaBook(), engine=engine)
    try:
        s.send("hello")
        on_disk: list[bytes] = []

        def on_piece(_piece: str) -> None:
            if not on_disk:  # the reply's turn is on disk (empty, unfinished); then the disk goes away
                on_disk.append(s.path.read_bytes())
                _break_by_directory(s)

        with pytest.raises(ChatError) as failed:
            s.reply(on_piece, threading.Event())
        assert "\n" not in str(failed.value)
        assert dump_chat(s.chat) == dump_chat(parse_chat(on_disk[0], s.path))
        assert s.chat.turns[-1].unfinished and s.chat.turns[-1].text == ""
    finally:
        s.close()
