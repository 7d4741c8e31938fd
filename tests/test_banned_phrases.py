"""Banned phrases with backtracking: the engine takes a phrase back and resamples, and the stream never
shows what it takes back. Real models: the demo model for real prose, a scripted tiny model for bytes."""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_remote_protocols import Fake, connect, fake, kobold_routes, llama_routes  # noqa: F401 - fixture
from tinymodel import token_id, write_tiny_model

from rpchat.engine.banned import default_phrases, fold
from rpchat.engine.base import Result, Sampling
from rpchat.engine.llama import LocalEngine, LocalSettings
from rpchat.prompt.segments import Segment

SAMPLED = Sampling(temperature=0.8, min_p=0.05, repeat_penalty=1.1, seed=4242, max_tokens=48)
GREEDY = dataclasses.replace(SAMPLED, temperature=0.0)


@pytest.fixture(scope="module")
def demo(demo_model: Path) -> Iterator[tuple[LocalEngine, list[Segment], list[str]]]:
    from rpchat.bench import _turn
    from rpchat.bench_data import CARD, PERSONA
    from rpchat.prompt.builder import build_prompt
    from rpchat.prompt.formats import load_format

    engine = LocalEngine(LocalSettings(demo_model, n_ctx=1024, n_threads=2))
    engine.load()
    history = [_turn(False, CARD.first_mes), _turn(True, "Where am I? Tell me about this place.")]
    built = build_prompt(load_format("limarp-v3"), CARD, PERSONA, history, length=None,
                         counter=engine.count_tokens, n_ctx=engine.n_ctx, max_new=48)
    yield engine, list(built.segments), list(built.stop)
    engine.close()


def reply(engine: LocalEngine, prompt: list[Segment], sampling: Sampling, stop: list[str] = ()) -> tuple[
        list[str], Result]:
    """Stream one reply from an empty KV cache (so every run evaluates the prompt the same way)."""
    engine.reset_cache()
    gen = engine.stream(prompt, sampling, stop)
    pieces = list(gen)
    return pieces, gen.result


def a_span(text: str, words: int = 3) -> str:
    """A few words from the middle of the model's own reply: a phrase it would produce."""
    spans = re.findall(rf"[A-Za-z']+(?: [A-Za-z']+){{{words - 1}}}", text)
    assert spans, text
    return str(spans[len(spans) // 2])


def assert_stream_never_takes_back(pieces: list[str], result: Result) -> None:
    shown = ""
    for piece in pieces:
        shown += piece
        assert result.text.startswith(shown)  # every piece extends what the user saw
    assert shown == result.text


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "seeded"])
def test_a_phrase_the_model_writes_never_reaches_the_output(demo, sampling: Sampling) -> None:  # type: ignore[no-untyped-def]
    engine, prompt, stop = demo
    _, plain = reply(engine, prompt, sampling, stop)
    phrase = a_span(plain.text)
    banned = dataclasses.replace(sampling, banned_phrases=(phrase,))
    pieces, first = reply(engine, prompt, banned, stop)
    _, second = reply(engine, prompt, banned, stop)

    assert fold(phrase) not in fold(first.text)
    assert first.rewinds >= 1 and first.tokens_resampled >= first.rewinds
    before = plain.text[: plain.text.index(phrase)]
    assert first.text.startswith(before)  # the text before the phrase is the same
    assert second.text == first.text  # the seed stays reproducible with the rewinds
    assert_stream_never_takes_back(pieces, first)


def test_matching_ignores_case_and_curly_quotes(demo) -> None:  # type: ignore[no-untyped-def]
    engine, prompt, stop = demo
    _, plain = reply(engine, prompt, GREEDY, stop)
    phrase = a_span(plain.text)
    shouted = phrase.upper().replace("'", "\u2019")
    pieces, result = reply(engine, prompt, dataclasses.replace(GREEDY, banned_phrases=(shouted,)), stop)
    assert fold(phrase) not in fold(result.text) and result.rewinds >= 1
    assert_stream_never_takes_back(pieces, result)


def test_a_list_that_never_matches_changes_nothing(demo) -> None:  # type: ignore[no-untyped-def]
    engine, prompt, stop = demo
    plain_pieces, plain = reply(engine, prompt, SAMPLED, stop)
    with_list = dataclasses.replace(SAMPLED, banned_phrases=default_phrases())
    pieces, result = reply(engine, prompt, with_list, stop)
    if any(fold(p) in fold(plain.text) for p in default_phrases()):
        pytest.skip("the demo model wrote a shipped phrase")
    assert result.text == plain.text and result.rewinds == 0
    assert_stream_never_takes_back(pieces, result)
    # nothing is held back when no tail can begin a phrase: the same pieces, one per token or so
    assert len(pieces) >= len(plain_pieces) // 2


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEngine]:
    """Greedy decoding after "▁Hello" spells "é the world### Input" (é as two byte tokens), then EOS."""
    chain = ["▁Hello", "<0xC3>", "<0xA9>", "▁the", "▁world", "###", "▁Input", "</s>"]
    ids = [token_id(t) for t in chain]
    path = write_tiny_model(tmp_path_factory.mktemp("scripted") / "scripted.gguf",
                            successors=dict(itertools.pairwise(ids)))
    engine = LocalEngine(LocalSettings(path, n_ctx=512, n_threads=2))
    engine.load()
    yield engine
    engine.close()


HELLO = [Segment("Hello", "user")]


def test_a_phrase_starting_with_a_split_character_rewinds_to_its_first_byte(scripted: LocalEngine) -> None:
    _, plain = reply(scripted, HELLO, dataclasses.replace(GREEDY, banned_phrases=("zzz",)))
    assert plain.text == "é the world### Input" and plain.rewinds == 0
    pieces, result = reply(scripted, HELLO, dataclasses.replace(GREEDY, banned_phrases=("É THE",)))
    assert "é the" not in fold(result.text)
    assert "\ufffd" not in result.text  # the rewind took both bytes of é, not half a character
    assert result.rewinds >= 1
    assert_stream_never_takes_back(pieces, result)


def test_a_phrase_in_the_middle_keeps_what_came_before(scripted: LocalEngine) -> None:
    pieces, result = reply(scripted, HELLO, dataclasses.replace(GREEDY, banned_phrases=("the world",)))
    assert result.text.startswith("é") and "the world" not in result.text
    assert result.rewinds >= 1
    assert_stream_never_takes_back(pieces, result)
    # "é" could never start a phrase, so it was shown before the rewind happened
    assert pieces[0] == "é"


def test_stop_strings_still_stop_with_a_list(scripted: LocalEngine) -> None:
    _, result = reply(scripted, HELLO, dataclasses.replace(GREEDY, banned_phrases=("input",)), ["###"])
    assert result.text == "é the world" and result.finish_reason == "stop" and result.rewinds == 0


def test_the_shipped_list_loads() -> None:
    phrases = default_phrases()
    assert "ministrations" in phrases and "shivers down her spine" in phrases
    assert len(phrases) == len({fold(p) for p in phrases})


def test_reply_ban_flag_keeps_a_phrase_out(tmp_path: Path, tiny_model: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    card = tmp_path / "jay.json"
    card.write_text(json.dumps({"name": "Jay", "first_mes": "Hi."}))

    def reply_text(chat: str, *extra: str) -> tuple[str, str]:
        res = subprocess.run(
            [sys.executable, "-m", "rpchat", "reply", str(card), "--chat", str(tmp_path / chat), "--say", "hello",
             "--model", str(tiny_model), "--max-new", "12", "--seed", "3", *extra],
            check=False, capture_output=True, text=True, timeout=300,
            env={**os.environ, "RPCHAT_HOME": str(tmp_path / "home")})
        assert res.returncode == 0, res.stderr
        last = json.loads((tmp_path / chat).read_text(encoding="utf-8").splitlines()[-1])
        return str(last["mes"]), res.stderr

    plain, _ = reply_text("a.jsonl")
    words = re.findall(r"[A-Za-z0-9]{3,}", plain)  # the tiny model writes bytes too: take letters
    assert words, plain
    phrase = words[0]
    banned, stderr = reply_text("b.jsonl", "--ban", phrase.upper(), "--ban", "ministrations")
    assert fold(phrase) not in fold(banned)
    assert "banned phrase(s) rewritten" in stderr



REMOTE_BANS = Sampling(banned_phrases=("shivers down her spine", "ministrations"))


def test_koboldcpp_gets_the_list_as_banned_tokens(fake: Fake) -> None:  # noqa: F811
    kobold_routes(fake)
    gen = connect(fake).stream([Segment("Hi", "template")], REMOTE_BANS)
    list(gen)
    body = fake.bodies("/api/extra/generate/stream")[0]
    assert body["banned_tokens"] == ["shivers down her spine", "ministrations"]  # its anti-slop phrase ban
    assert gen.result.unsupported == []


def test_a_server_without_phrase_bans_says_the_list_is_not_applied(fake: Fake) -> None:  # noqa: F811
    llama_routes(fake)
    gen = connect(fake).stream([Segment("Hi", "template")], REMOTE_BANS)
    list(gen)
    assert "banned_phrases" not in fake.bodies("/completion")[0]
    assert gen.result.unsupported == ["banned_phrases"]  # shown as "not applied by this server"


@pytest.mark.parametrize("settings", [
    {"temperature": 0.9, "repeat_penalty": 1.3, "frequency_penalty": 0.5, "presence_penalty": 0.3, "repeat_last_n": 6},
    {"temperature": 1.0, "dry_multiplier": 2.0, "dry_allowed_length": 1, "xtc_probability": 0.5,
     "xtc_threshold": 0.05},
    {"temperature": 1.0, "mirostat": 2},
    {"temperature": 1.0, "mirostat": 1, "repeat_penalty": 1.2},
], ids=["penalties", "dry-xtc", "mirostat2", "mirostat1"])
def test_a_rewound_sampler_chain_draws_again_what_it_drew(tiny_model: Path, settings: dict[str, object]) -> None:
    import llama_cpp as L
    import numpy as np

    from rpchat.engine.sampling import SamplerChain

    llm = L.Llama(str(tiny_model), n_ctx=512, verbose=False)
    rng = np.random.default_rng(5)
    # few strong candidates per row, and the same ones across rows, so penalties and DRY matter
    rows = [rng.standard_normal(llm.n_vocab()).astype(np.float32) for _ in range(10)]
    for row in rows:
        row[300:306] += 6.0
    history = [300, 301, 302, 303]
    try:
        with SamplerChain(llm, llm, Sampling(seed=11, **settings), history) as chain:  # type: ignore[arg-type]

            def draw(part: list[np.ndarray]) -> list[int]:
                picks = []
                for row in part:
                    token = chain.apply(row).selected
                    chain.accept(token)
                    picks.append(token)
                return picks

            first = draw(rows[:4])
            mark = chain.checkpoint()
            tail = draw(rows[4:])
            assert draw(rows[4:]) != tail  # the chain moved on: RNG, penalties and mu changed
            chain.rewind(mark, [*history, *first])
            again = draw(rows[4:])
            chain.rewind(mark, [*history, *first])  # a checkpoint serves more than one rewind
            third = draw(rows[4:])
            mark.close()
    finally:
        llm.close()
    assert again == tail and third == tail


def test_settings_edit_the_list_one_phrase_per_line(tmp_path: Path) -> None:
    import asyncio

    from test_tui_screens_settings import Host
    from textual.widgets import TextArea

    from rpchat.config import Config, load_config
    from rpchat.paths import profile
    from rpchat.tui.settings import SettingsScreen

    seen: list[str] = []

    async def run(config: Config, text: str | None) -> None:
        app = Host(lambda: SettingsScreen(config))
        async with app.run_test(size=(110, 36)) as pilot:
            await pilot.pause()
            area = app.screen.query_one("#banned-phrases", TextArea)
            seen.append(area.text)
            if text is not None:
                area.text = text
            await pilot.press("ctrl+s")
            await pilot.pause()

    asyncio.run(run(Config(), None))
    assert seen[0].splitlines() == list(default_phrases())  # a new user sees the shipped list
    assert load_config(profile()).banned_phrases is None  # kept as "the shipped list"
    asyncio.run(run(Config(), "Lighthouse\n\n  shivers   down her spine \nlighthouse\n"))
    assert load_config(profile()).banned_phrases == ["Lighthouse", "shivers down her spine"]
    asyncio.run(run(load_config(profile()), ""))
    assert seen[2] == "Lighthouse\nshivers down her spine"
    assert load_config(profile()).banned_phrases == []  # an empty list turns banning off


def test_a_chat_keeps_its_own_list_on_top_of_the_settings(tmp_path: Path) -> None:
    from rpchat.config import Config
    from rpchat.session import open_chat_session

    card = Path(__file__).parent / "fixtures" / "default_Seraphina.png"
    chat = tmp_path / "c.jsonl"
    config = Config(banned_phrases=["ministrations"])
    session = open_chat_session(card, chat, config=config, create_missing=True)
    session.set_chat_banned([" The  Sea ", "", "the sea", "Forest glade"])
    session.close()
    again = open_chat_session(card, chat, config=config)
    assert again.chat.banned_phrases == ["The Sea", "Forest glade"]  # saved in the chat file
    assert again.all_banned() == ("ministrations", "The Sea", "Forest glade")
    again.close()
    shipped = open_chat_session(card, chat, config=Config())
    assert shipped.all_banned()[: len(default_phrases())] == default_phrases()
    shipped.close()


def test_rewinds_are_capped_and_the_reply_still_ends(tiny_model: Path) -> None:
    from rpchat.engine.banned import MAX_REWINDS

    engine = LocalEngine(LocalSettings(tiny_model, n_ctx=512, n_threads=2))
    engine.load()
    try:
        everything = tuple("abcdefghijklmnopqrstuvwxyz0123456789")  # the tiny model cannot avoid them all
        pieces, result = reply(engine, HELLO, dataclasses.replace(SAMPLED, max_tokens=40, banned_phrases=everything))
    finally:
        engine.close()
    assert result.rewinds == MAX_REWINDS and result.finish_reason in ("length", "eos")
    assert_stream_never_takes_back(pieces, result)


def test_only_what_could_still_become_a_phrase_is_held_back(scripted: LocalEngine) -> None:
    # " the world" could still become "the worlds end" until "###" arrives; nothing else waits
    pieces, result = reply(scripted, HELLO, dataclasses.replace(GREEDY, banned_phrases=("the worlds end",)))
    assert pieces == ["é", " the world###", " Input"] and result.rewinds == 0
    plain, _ = reply(scripted, HELLO, GREEDY)
    assert plain == ["é", " the", " world", "###", " Input"]  # the same tokens, one piece each


def test_the_shipped_list_is_the_local_engines_default_only(tmp_path: Path) -> None:
    # A server that cannot ban phrases would say "not applied" on every reply for a list nobody asked for.
    import dataclasses

    from rpchat.config import Config, EngineConfig
    from rpchat.session import open_chat_session

    card = Path(__file__).parent / "fixtures" / "default_Seraphina.png"
    chat = tmp_path / "c.jsonl"
    remote = Config(engine=EngineConfig(kind="remote", remote_url="http://127.0.0.1:9"))
    session = open_chat_session(card, chat, config=remote, create_missing=True)
    assert session.all_banned() == ()
    session.close()
    chosen = open_chat_session(card, chat, config=dataclasses.replace(remote, banned_phrases=["ministrations"]))
    assert chosen.all_banned() == ("ministrations",)  # a list the user set is sent (or reported) as ever
    chosen.close()
    flag = open_chat_session(card, chat, config=Config(), remote=True)  # rpchat reply --engine URL
    assert flag.all_banned() == ()
    flag.close()
