"""Token alternatives from a remote server: the real llama-server's ``n_probs`` (raw probabilities, as
the local engine keeps them), a new swipe from an alternative through it, and a clear notice from an
API that sends no probabilities."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from llamaserver import LlamaServer, free_port
from session_support import make_card
from test_remote_protocols import Fake, connect, fake, kobold_routes  # noqa: F401 - fixture

from rpchat.config import Config, EngineConfig
from rpchat.engine.alternatives import TOP_K, is_chosen
from rpchat.engine.base import Sampling
from rpchat.engine.llama import LocalEngine, LocalSettings
from rpchat.engine.remote import RemoteEngine
from rpchat.personas import PersonaBook
from rpchat.prompt.segments import Segment
from rpchat.session import open_chat_session

PROMPT = [Segment("Once upon a time, on a small island with a lighthouse, there lived", "template")]
GREEDY = Sampling(temperature=0.0, max_tokens=16, n_probs=TOP_K)


@pytest.fixture(scope="module")
def server(
    llama_server_binary: Path, demo_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServer]:
    srv = LlamaServer(llama_server_binary, demo_model, tmp_path_factory.mktemp("llama-server") / "server.log",
                      n_ctx=1024)  # fmt: skip
    yield srv
    srv.stop()


@pytest.fixture
def remote(server: LlamaServer) -> Iterator[RemoteEngine]:
    eng = RemoteEngine(server.url)
    eng.load()
    yield eng
    eng.close()


def test_llama_server_n_probs_match_the_local_engine(remote: RemoteEngine, demo_model: Path) -> None:
    gen = remote.stream(PROMPT, GREEDY)
    text = "".join(gen)
    trace = gen.result.trace
    assert trace is not None and trace.text == text and "n_probs" not in gen.result.unsupported
    assert len(trace.steps) == gen.result.tokens_generated
    for step in trace.steps:
        probs = [a.prob for a in step.top]
        assert len(step.top) == TOP_K and sum(probs) <= 1.0 + 1e-5 and probs == sorted(probs, reverse=True)
        assert step.top[0].token == step.token and step.top[0].prob == pytest.approx(step.prob)

    local = LocalEngine(LocalSettings(demo_model, n_ctx=1024, n_threads=2))
    local.load()
    try:
        mine = local.stream(PROMPT, GREEDY)
        list(mine)
        assert mine.result.trace is not None
        # Same model, same llama.cpp: the same raw distribution, up to float noise (which may tip a
        # near tie in greedy decoding later on, so only the shared start is compared).
        shared = 0
        for theirs, ours in zip(trace.steps, mine.result.trace.steps, strict=False):
            if theirs.token != ours.token:
                break
            assert ours.prob == pytest.approx(theirs.prob, abs=0.03)
            assert ours.top[0].prob == pytest.approx(theirs.top[0].prob, abs=0.03)
            shared += 1
        assert shared >= 5
    finally:
        local.close()


def test_an_alternative_through_llama_server_reuses_its_cache(
    remote: RemoteEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RPCHAT_HOME", str(tmp_path / "home"))
    config = Config(preset="deterministic", max_new_tokens=24)
    s = open_chat_session(make_card(tmp_path), config=config, personas=PersonaBook(), engine=remote)
    s.banned_phrases = ()
    s.send("Where am I? Tell me about this island.")
    first = s.reply(lambda _p: None, threading.Event())
    index = len(s.chat.turns) - 1
    trace = s.trace_of(index)
    assert trace is not None and trace.open_text.rstrip() == s.chat.turns[index].text
    at = len(trace.steps) // 2
    alt = next(a for a in trace.steps[at].top if a.token != trace.steps[at].token and a.whole and a.text.strip())
    prefix = s.swipe_from_alternative(index, at, alt)
    second = s.reply(lambda _p: None, threading.Event(), "continue")
    assert s.chat.turns[index].swipes[1].startswith(prefix.rstrip())
    # The server's cache_prompt keeps the earlier prompt and reply, so most of it is not read again.
    # (This llama-server with Gemma 3's sliding-window cache re-reads a dozen tokens before the cut,
    # 13 of 116 here; the local engine reads only the chosen token.)
    assert second.prompt_tokens == first.prompt_tokens + at + 1
    assert second.prompt_tokens_reused >= first.prompt_tokens - 16
    assert second.prompt_tokens_evaluated <= at + 17


def assert_steps_sane(trace, n: int) -> None:  # type: ignore[no-untyped-def]
    assert len(trace.steps) == n
    for step in trace.steps:
        probs = [a.prob for a in step.top]
        assert 1 <= len(step.top) <= TOP_K and sum(probs) <= 1.0 + 1e-5 and probs == sorted(probs, reverse=True)
        assert is_chosen(step, step.top[0]) and step.top[0].prob == pytest.approx(step.prob, abs=1e-4)


def test_openai_completions_logprobs_from_llama_server(server: LlamaServer) -> None:
    remote = RemoteEngine(server.url, api="openai")
    remote.load()
    try:
        gen = remote.stream(PROMPT, GREEDY)
        text = "".join(gen)
        assert gen.result.trace is not None and gen.result.trace.text == text
        assert_steps_sane(gen.result.trace, gen.result.tokens_generated)
    finally:
        remote.close()


@pytest.fixture(scope="module")
def llama_cpp_server(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-cpp-python's own OpenAI-compatible server (``python -m llama_cpp.server``) on loopback."""
    pytest.importorskip("llama_cpp.server.app")
    port = free_port()
    log = tmp_path_factory.mktemp("llama-cpp-server") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(demo_model),
                                 "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024",
                                 "--n_threads", "2"], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/v1/models", timeout=1.0).status_code == 200:
                    break
            time.sleep(0.2)
        else:
            pytest.fail(f"llama_cpp.server did not start: {log.read_text(errors='replace')[-2000:]}")
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_openai_completions_logprobs_from_llama_cpp_python_server(llama_cpp_server: str) -> None:
    remote = RemoteEngine(llama_cpp_server, api="openai")
    remote.load()
    try:
        gen = remote.stream(PROMPT, GREEDY)
        text = "".join(gen)
        trace = gen.result.trace
        assert trace is not None and trace.text == text and len(text) > 10
        assert_steps_sane(trace, len(trace.steps))
        assert len(trace.steps) >= 8
        assert all(a.token is None for s in trace.steps for a in s.top)  # the OpenAI form has no ids
    finally:
        remote.close()


def test_an_api_without_probabilities_says_so(fake: Fake, tmp_path: Path) -> None:  # noqa: F811 - fixture
    kobold_routes(fake)
    engine = connect(fake)
    s = open_chat_session(make_card(tmp_path), config=Config(engine=EngineConfig(kind="remote", remote_url=fake.url)),
                          personas=PersonaBook(), engine=engine)
    s.send("Hello")
    result = s.reply(lambda _p: None, threading.Event())
    assert result.trace is None and "n_probs" not in result.unsupported  # not asked for, so nothing to report
    assert "n_probs" not in str(fake.requests[-1].body)
    index = len(s.chat.turns) - 1
    assert s.trace_of(index) is None
    assert s.alternatives_missing(index) == "rpchat gets none from this server's API (remote (KoboldCpp))"
