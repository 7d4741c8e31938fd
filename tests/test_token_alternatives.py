"""Token alternatives: each reply token's probability and top 5, and a new swipe from a chosen
alternative that reuses the KV cache up to that token. The real Gemma 3 270M demo model throughout."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from session_support import make_card

from rpchat.chat.store import load_chat
from rpchat.config import Config, EngineConfig
from rpchat.engine.alternatives import TOP_K, TokenTrace
from rpchat.engine.base import Sampling
from rpchat.engine.llama import LocalEngine, LocalSettings
from rpchat.personas import PersonaBook
from rpchat.prompt.segments import Segment
from rpchat.session import RoleplaySession, open_chat_session

GREEDY = Sampling(temperature=0.0, max_tokens=40, n_probs=TOP_K)
PROMPT = [Segment("Once upon a time, on a small island with a lighthouse, there lived", "template")]
SAMPLED = Sampling(temperature=0.9, min_p=0.02, seed=7, max_tokens=40, n_probs=TOP_K)


@pytest.fixture(scope="module")
def engine(demo_model: Path) -> Iterator[LocalEngine]:
    eng = LocalEngine(LocalSettings(demo_model, n_ctx=1024, n_threads=2))
    eng.load()
    yield eng
    eng.close()


@pytest.fixture
def session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: LocalEngine) -> Iterator[RoleplaySession]:
    monkeypatch.setenv("RPCHAT_HOME", str(tmp_path / "home"))
    config = Config(engine=EngineConfig(model=str(engine.settings.model_path), n_ctx=1024), preset="deterministic",
                    max_new_tokens=40)
    engine.reset_cache()
    s = open_chat_session(make_card(tmp_path), config=config, personas=PersonaBook(), engine=engine)
    s.banned_phrases = ()
    yield s


def generate(engine: LocalEngine, sampling: Sampling, stop: tuple[str, ...] = ()) -> tuple[str, TokenTrace]:
    engine.reset_cache()
    gen = engine.stream(PROMPT, sampling, stop)
    text = "".join(gen)
    assert gen.result.trace is not None
    assert len(gen.result.trace.steps) >= min(gen.result.tokens_generated, 20)
    return text, gen.result.trace


def assert_sane(trace: TokenTrace, greedy: bool) -> None:
    assert trace.steps
    for step in trace.steps:
        assert 1 <= len(step.top) <= TOP_K
        probs = [a.prob for a in step.top]
        assert all(0.0 <= p <= 1.0 for p in probs) and sum(probs) <= 1.0 + 1e-5
        assert probs == sorted(probs, reverse=True)
        assert 0.0 < step.prob <= 1.0
        if greedy:  # the pick is the most likely token, so it leads its own list
            assert step.top[0].token == step.token and step.top[0].prob == pytest.approx(step.prob)
        elif step.token in [a.token for a in step.top]:
            assert step.prob == pytest.approx(next(a.prob for a in step.top if a.token == step.token))


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "seeded"])
def test_every_token_has_its_probability_and_top_five(engine: LocalEngine, sampling: Sampling) -> None:
    text, trace = generate(engine, sampling)
    assert trace.text == text
    assert len(trace.steps) == 40  # one step per generated token
    assert_sane(trace, greedy=sampling.temperature == 0)


def test_capture_does_not_change_the_reply(engine: LocalEngine) -> None:
    engine.reset_cache()
    gen = engine.stream(PROMPT, dataclasses.replace(SAMPLED, n_probs=0))
    plain = "".join(gen)
    assert gen.result.trace is None
    assert generate(engine, SAMPLED)[0] == plain


def test_tokens_past_a_stop_string_are_not_in_the_trace(engine: LocalEngine) -> None:
    text, _ = generate(engine, GREEDY)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut, trace = generate(engine, GREEDY, (stop,))
    assert cut == text[: text.index(stop)]
    assert trace.text == cut


def test_banned_phrase_rewinds_take_their_tokens_out_of_the_trace(engine: LocalEngine) -> None:
    text, _ = generate(engine, GREEDY)
    words = text.split()
    phrase = " ".join(words[2:4])
    banned, trace = generate(engine, dataclasses.replace(GREEDY, banned_phrases=(phrase,)))
    assert phrase.lower() not in banned.lower()
    assert trace.text == banned
    assert_sane(trace, greedy=False)  # the banned token's position no longer has it on top


def test_an_alternative_makes_a_swipe_that_shares_the_prefix_and_the_cache(session: RoleplaySession) -> None:
    session.send("Where am I? Tell me about this island.")
    first = session.reply(lambda _p: None, threading.Event())
    index = len(session.chat.turns) - 1
    trace = session.trace_of(index)
    assert trace is not None and trace.open_text.rstrip() == session.chat.turns[index].text
    assert_sane(trace, greedy=True)

    at = len(trace.steps) // 2
    alt = next(a for a in trace.steps[at].top if a.token != trace.steps[at].token and a.whole and a.text.strip())
    prefix = session.swipe_from_alternative(index, at, alt)
    assert prefix == (trace.generated[: sum(len(s.text) for s in trace.steps[:at])] + alt.text).lstrip()
    assert load_chat(session.path).turns[index].swipes == [trace.open_text.rstrip(), prefix]
    assert load_chat(session.path).turns[index].unfinished

    pieces: list[str] = []
    second = session.reply(pieces.append, threading.Event(), "continue")
    turn = load_chat(session.path).turns[index]
    assert turn.swipe_id == 1 and not turn.unfinished
    assert turn.swipes[0] == trace.open_text.rstrip()  # the first swipe is kept as it was
    assert turn.swipes[1].startswith(prefix.rstrip()) and len(turn.swipes[1]) > len(prefix)
    assert turn.swipes[1] == (prefix + "".join(pieces)).rstrip()
    # The cache held the prompt and the reply; everything before the chosen token is reused, so
    # only about the chosen token is read again (a retokenized boundary may add one more).
    assert second.prompt_tokens_reused >= first.prompt_tokens + at - 1
    assert second.prompt_tokens_evaluated <= 3

    # The new swipe has its own trace: the kept prefix, the chosen token, then the continuation.
    new = session.trace_of(index)
    assert new is not None and new.open_text.rstrip() == turn.swipes[1]
    assert [s.token for s in new.steps[:at]] == [s.token for s in trace.steps[:at]]
    assert new.steps[at].token == alt.token and new.steps[at].prob == alt.prob
    assert len(new.steps) > at + 1

    # Swiping back shows the first swipe's own alternatives again.
    assert session.swipe(-1) == "moved"
    assert session.trace_of(index) == trace


def test_no_alternatives_for_an_edited_or_older_message(session: RoleplaySession) -> None:
    session.send("Hello there.")
    session.reply(lambda _p: None, threading.Event())
    index = len(session.chat.turns) - 1
    assert session.trace_of(index) is not None
    assert session.trace_of(0) is None  # the greeting was never generated
    assert "last reply" in session.alternatives_missing(0)
    session.edit(index, "Something else entirely.")
    assert session.trace_of(index) is None
    assert "edited" in session.alternatives_missing(index)
