"""The story-so-far summary: written on the engine's side sequence when turns fall out of the context,
kept in the chat file, placed in the instruction, preempted by any reply (issue 10, part 3)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from session_support import make_card

from rpchat.cards.model import Card
from rpchat.chat.library import export_st_chat, import_st_chat
from rpchat.chat.model import Chat, StorySummary
from rpchat.chat.store import ChatStore, load_chat
from rpchat.config import Config, EngineConfig, SummaryConfig
from rpchat.engine.base import Sampling
from rpchat.engine.factory import make_engine
from rpchat.engine.llama import LocalEngine, LocalSettings
from rpchat.memory import set_summary, update_summary
from rpchat.personas import Persona
from rpchat.prompt import build_prompt, load_format
from rpchat.prompt.segments import Segment
from rpchat.session import RoleplaySession, open_chat_session

GREEDY = Sampling(temperature=0.0, max_tokens=8)
SUMMARY = "Theo washed ashore; Marisol took him in and promised a boat by spring."


@pytest.fixture(autouse=True)
def _profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPCHAT_HOME", str(tmp_path / "home"))


# --- where it goes (no engine) ----------------------------------------------------------------------------

CARD = Card(name="Marisol", description="Marisol keeps the lighthouse.", scenario="{{user}} washes ashore.")
PERSONA = Persona("Theo", "A sailor.")


def _chat() -> Chat:
    chat = Chat.start("Marisol", "Theo", ['"Up you get."'])
    chat.add(True, "Where am I?")
    return chat


def test_limarp_puts_the_summary_after_the_scenario_before_the_closing_line() -> None:
    built = build_prompt(load_format("limarp-v3"), CARD, PERSONA, _chat().turns, length="medium", summary=SUMMARY)
    assert built.text == (
        "### Instruction:\nMarisol's Persona: Marisol keeps the lighthouse.\n\nTheo's Persona: A sailor.\n\n"
        "Scenario: Theo washes ashore.\n\n"
        f"Story so far: {SUMMARY}\n\n"
        "Play the role of Marisol. You must engage in a roleplaying chat with Theo below this line. "
        "Do not write dialogues and narration for Theo.\n\n"
        '### Response:\nMarisol: "Up you get."\n\n### Input:\nTheo: Where am I?\n\n'
        "### Response: (length = medium)\nMarisol:"
    )
    # Without a summary the format is byte-for-byte what it was (the golden tests hold).
    plain = build_prompt(load_format("limarp-v3"), CARD, PERSONA, _chat().turns, length="medium")
    assert plain.text == built.text.replace(f"Story so far: {SUMMARY}\n\n", "")


def test_limamono_keeps_single_newlines() -> None:
    built = build_prompt(load_format("limamono"), CARD, PERSONA, _chat().turns, summary=SUMMARY)
    assert f"\nScenario: Theo washes ashore.\nStory so far: {SUMMARY}\n### Response:\n" in built.text


def test_a_user_format_without_the_slot_gets_it_before_its_closing_paragraph(tmp_path: Path) -> None:
    from rpchat.paths import profile

    folder = profile().user_formats_dir
    folder.mkdir(parents=True)
    text = (Path(__file__).parents[1] / "rpchat/prompt/formats/limarp-v3.yaml").read_text()
    text = text.replace('  - "Story so far: {{summary}}"\n', "")
    text = text[: text.index("# The request that has the model")]  # and no summary_prompt either
    (folder / "mine.yaml").write_text(text)
    built = build_prompt(load_format("mine"), CARD, PERSONA, _chat().turns, summary=SUMMARY)
    assert f"Scenario: Theo washes ashore.\n\nStory so far: {SUMMARY}\n\nPlay the role of Marisol." in built.text

    from rpchat.prompt.summary import summary_request

    request = summary_request(load_format("mine"), "Marisol", "Theo", _chat().turns, [0, 1], "")
    text = "".join(s.text for s in request.segments)
    assert text.startswith("### Instruction:\nSummarize the roleplay between Marisol and Theo")
    assert text.endswith('### Input:\nMarisol: "Up you get."\nTheo: Where am I?\n\n### Response:\nSummary:')
    assert "Earlier summary" not in text and "\n### Input:" in request.stop


def test_the_summary_is_stored_as_st_memory_and_survives_export_and_import(tmp_path: Path) -> None:
    chat = _chat()
    chat.add(False, "Tea?")
    chat.summary = StorySummary(SUMMARY, covers=1, pinned=True)
    assert chat.turns[1].extra["memory"] == SUMMARY  # where SillyTavern's Summarize keeps it
    path = tmp_path / "a.jsonl"
    ChatStore(path).save(chat)
    assert load_chat(path).summary == StorySummary(SUMMARY, 1, pinned=True, enabled=True)
    export_st_chat(load_chat(path), tmp_path / "out.jsonl")
    back = load_chat(import_st_chat(tmp_path / "out.jsonl", tmp_path / "chats"))
    assert back.summary == StorySummary(SUMMARY, 1, pinned=True, enabled=True)


# --- the engine's side sequence (tiny model) --------------------------------------------------------------


def _engine(model: Path, n_ctx: int, side: int) -> LocalEngine:
    engine = LocalEngine(LocalSettings(model, n_ctx=n_ctx, n_threads=1, side_ctx=side))
    engine.load()
    return engine


def test_the_chat_keeps_its_whole_context_and_its_cache_beside_a_side_generation(tiny_model: Path) -> None:
    engine = _engine(tiny_model, 512, 256)
    try:
        assert engine.n_ctx == 512 and engine.side.cells == 256
        # Nearly the whole n_ctx for the chat: with llama.cpp's split cache each sequence would hold 384.
        prompt = [Segment(" ".join(f"w{i}" for i in range(140)), "user")]
        first = engine.stream(prompt, GREEDY)
        reply = "".join(first)
        assert first.result.prompt_tokens > 450
        cached = engine.cached_tokens
        side = engine.generate_aside([Segment("a summary of everything", "user")], GREEDY)
        assert side.finish_reason in ("length", "eos") and side.prompt_tokens > 0
        assert engine.cached_tokens == cached
        again = engine.stream([prompt[0], Segment(reply + " more", "user")], Sampling(temperature=0.0, max_tokens=2))
        "".join(again)
        # The chat's cache survived: only the new tail is evaluated.
        assert again.result.prompt_tokens_reused >= first.result.prompt_tokens
        assert again.result.prompt_tokens_evaluated < 20
    finally:
        engine.close()


def test_a_reply_preempts_a_side_generation(tiny_model: Path) -> None:
    engine = _engine(tiny_model, 512, 512)
    try:
        outcome = {}
        long = [Segment(" ".join(f"x{i}" for i in range(150)), "user")]

        def side() -> None:
            outcome["side"] = engine.generate_aside(long, Sampling(temperature=0.0, max_tokens=500))

        thread = threading.Thread(target=side)
        thread.start()
        deadline = time.monotonic() + 60
        while not (engine.side._job is not None and engine.lock.locked()) and time.monotonic() < deadline:
            time.sleep(0.001)
        reply = engine.stream([Segment("Hello there", "user")], GREEDY)
        "".join(reply)
        thread.join(60)
        assert reply.result.finish_reason in ("length", "eos", "stop")
        assert outcome["side"].finish_reason == "cancelled"
        assert outcome["side"].tokens_generated < 500
        # The side sequence gave its cells back.
        import llama_cpp

        assert llama_cpp.llama_memory_seq_pos_max(llama_cpp.llama_get_memory(engine.loaded.ctx), 1) == -1
    finally:
        engine.close()


# --- a session on the demo model --------------------------------------------------------------------------


def _session(model: Path, tmp_path: Path, **summary: int | bool) -> RoleplaySession:
    cfg = Config(engine=EngineConfig(model=str(model), n_ctx=512, n_threads=2), preset="deterministic",
                 max_new_tokens=12, default_length=None,
                 summary=SummaryConfig(**{"min_turns": 2, "chunk_turns": 4, "max_tokens": 24, **summary}))
    card = make_card(tmp_path, "Marisol")
    session = open_chat_session(card, tmp_path / "chat.jsonl", config=cfg, engine=make_engine(cfg),
                                create_missing=True)
    assert session.engine is not None
    session.engine.load()
    chat = session.chat
    for i in range(14):  # long turns, so the older ones fall out of 512 tokens
        chat.add(True, f"Turn {i}: I tell Marisol about the harbour of Veldra, my sister Ana and the mill by the "
                       "river, and ask what she remembers of the storm that brought me here.")
        chat.add(False, f"Reply {i}: Marisol listens, nods, and says the storm broke the old pier.")
    session.save()
    return session


def test_turns_that_fall_out_are_summarised_and_the_prompt_carries_the_summary(demo_model: Path,
                                                                                 tmp_path: Path) -> None:
    session = _session(demo_model, tmp_path)
    try:
        dropped = session.build().dropped
        assert len(dropped) >= 2 and "Story so far" not in session.build().text
        update = update_summary(session)
        assert update is not None and update.applied and update.text
        assert update.turns == dropped[:4] and update.prompt_tokens > 100
        saved = load_chat(session.path).summary
        assert saved.text == update.text and saved.covers == dropped[3]
        assert f"Story so far: {update.text}\n\nPlay the role of Marisol." in session.build().text

        # Hysteresis: the next update takes the next chunk, and none is due once all that fell out is covered.
        while (more := update_summary(session)) is not None:
            assert more.applied and more.turns[0] > load_chat(session.path).summary.covers - len(more.turns)
        assert session.chat.summary.covers >= session.build().dropped[-1] - 1
    finally:
        session.close()


def test_a_pinned_summary_is_never_rewritten_and_off_leaves_it_out(demo_model: Path, tmp_path: Path) -> None:
    session = _session(demo_model, tmp_path)
    try:
        set_summary(session, StorySummary("Written by hand.", covers=0, pinned=True))
        assert update_summary(session) is None
        assert load_chat(session.path).summary.text == "Written by hand."
        assert "Story so far: Written by hand." in session.build().text
        set_summary(session, StorySummary("Written by hand.", covers=0, pinned=True, enabled=False))
        assert "Story so far" not in session.build().text and update_summary(session) is None
        # The config's switch turns it off everywhere.
        set_summary(session, StorySummary("Written by hand.", covers=0))
        session.summary_config = SummaryConfig(enabled=False)
        assert "Story so far" not in session.build().text and update_summary(session) is None
    finally:
        session.close()


def test_the_chat_cache_survives_an_update_and_the_next_reply_reads_only_its_tail(demo_model: Path,
                                                                                 tmp_path: Path) -> None:
    session = _session(demo_model, tmp_path)
    try:
        session.send("I look at the sea.")
        first = session.reply(lambda _: None)
        assert first.prompt_tokens_evaluated > 200  # a cold start
        update = update_summary(session, prefill=True)
        assert update is not None and update.applied and update.prefilled > 0
        session.send("And then?")
        after = session.reply(lambda _: None)
        assert after.prompt_tokens_reused > after.prompt_tokens - 40
        assert after.prompt_tokens_evaluated < 40
    finally:
        session.close()


def test_a_send_preempts_a_running_summary_which_is_retried_later(demo_model: Path, tmp_path: Path) -> None:
    session = _session(demo_model, tmp_path, max_tokens=400)
    engine = session.engine
    assert isinstance(engine, LocalEngine)
    try:
        outcome = {}
        thread = threading.Thread(target=lambda: outcome.setdefault("update", update_summary(session)))
        thread.start()
        deadline = time.monotonic() + 120
        while not (engine.side._job is not None and engine.lock.locked()) and time.monotonic() < deadline:
            time.sleep(0.001)
        session.send("Wait, listen!")
        reply = session.reply(lambda _: None)
        thread.join(120)
        assert reply.finish_reason in ("eos", "stop", "length") and not reply.error
        update = outcome["update"]
        assert update is not None and not update.applied and update.finish_reason == "cancelled"
        assert load_chat(session.path).summary.text == ""
        session.summary_config = SummaryConfig(min_turns=2, chunk_turns=4, max_tokens=24)
        retried = update_summary(session)
        assert retried is not None and retried.applied
    finally:
        session.close()



def test_rpchat_reply_updates_the_summary_after_the_reply(tiny_model: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from rpchat.config import save_config
    from rpchat.paths import profile

    save_config(profile(), Config(engine=EngineConfig(n_threads=1), preset="deterministic", max_new_tokens=8,
                                  summary=SummaryConfig(min_turns=2, chunk_turns=4, max_tokens=12)))
    card = make_card(tmp_path, "Marisol")
    chat = Chat.start("Marisol", "User", ['"Up you get."'])
    for i in range(12):
        chat.add(True, f"Message {i}: the harbour, the mill, my sister Ana and the storm again.")
        chat.add(False, f"Answer {i}: Marisol listens and says the pier broke that night.")
    path = tmp_path / "chat.jsonl"
    ChatStore(path).save(chat)
    res = subprocess.run(
        [sys.executable, "-m", "rpchat", "reply", str(card), "--chat", str(path), "--say", "And then?",
         "--model", str(tiny_model), "--n-ctx", "512"],
        capture_output=True, text=True, timeout=600, env=os.environ.copy(), check=False,
    )
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    # After the reply and its figures, in that order.
    assert "tokens evaluated" in lines[-1] and lines[-1].startswith("rpchat: story so far updated: 4 turn(s)")
    assert "prompt " in lines[-2] and "reused" in lines[-2]
    saved = load_chat(path)
    assert saved.summary.text and saved.summary.covers == 3
    assert saved.turns[-1].text == res.stdout.strip()
