"""Waiting made visible: prompt-reading progress from the engines, in the TUI status line and on stderr."""

from __future__ import annotations

import asyncio
import itertools
import os
import pty
import select
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from session_support import make_card, open_chat_from_library, tiny_config, wait_for, write_profile_config
from tinymodel import write_tiny_model

from rpchat.chat.store import load_chat
from rpchat.engine import generation
from rpchat.engine.base import PromptProgress, Sampling
from rpchat.engine.llama import LocalEngine, LocalSettings
from rpchat.paths import profile
from rpchat.prompt.segments import Segment

GREEDY = Sampling(temperature=0.0, max_tokens=4)
WORDS = "the world said hello to you and she smiles at the island beach "


def local(model: Path, **kw: object) -> LocalEngine:
    settings = {"n_ctx": 2048, "n_threads": 2, "use_extra_bufts": True, **kw}
    engine = LocalEngine(LocalSettings(model, **settings))  # type: ignore[arg-type]
    engine.load()
    return engine


def prompt(n: int) -> list[Segment]:
    return [Segment("### Instruction:\nA chat.\n\n", "template"), Segment(WORDS * n, "user"),
            Segment("\n\n### Response:\nMarisol:", "template")]


def stream_events(engine: LocalEngine, segments: list[Segment]) -> tuple[list[object], object]:
    """Everything the consumer sees, in order: PromptProgress reports and text pieces."""
    events: list[object] = []
    gen = engine.stream(segments, GREEDY, progress=events.append)
    for piece in gen:
        events.append(piece)  # noqa: PERF402 - interleaved with the progress reports
    return events, gen.result


def assert_in_order(reports: list[PromptProgress], total: int) -> None:
    assert reports[0].done == 0
    assert all(r.total == total for r in reports)
    assert all(a.done <= b.done and a.elapsed_s <= b.elapsed_s for a, b in itertools.pairwise(reports))
    assert reports[-1].done == total


# --- local engine ---------------------------------------------------------------------------------------


def test_local_progress_arrives_in_order_before_the_reply_and_ends_at_the_total(tiny_model: Path) -> None:
    engine = local(tiny_model, n_batch=16)
    events, result = stream_events(engine, prompt(8))
    reports = [e for e in events if isinstance(e, PromptProgress)]
    first_text = next(i for i, e in enumerate(events) if isinstance(e, str))
    assert all(isinstance(e, PromptProgress) for e in events[:first_text])
    assert all(isinstance(e, str) for e in events[first_text:])  # nothing after the reply started
    assert result.prompt_tokens_evaluated > 16 * 3  # several chunks, so several reports
    assert_in_order(reports, result.prompt_tokens_evaluated)
    total = result.prompt_tokens_evaluated
    assert set(range(16, total, 16)) <= {r.done for r in reports}  # every chunk's end is reported
    engine.close()


def test_tokens_reused_from_the_cache_are_not_counted_as_work(tiny_model: Path) -> None:
    engine = local(tiny_model, n_batch=16)
    _, first = stream_events(engine, prompt(6))
    events, again = stream_events(engine, prompt(6) + [Segment(" More words here.", "user")])
    reports = [e for e in events if isinstance(e, PromptProgress)]
    assert again.prompt_tokens_reused > 0
    assert_in_order(reports, again.prompt_tokens_evaluated)
    assert reports[-1].total == again.prompt_tokens - again.prompt_tokens_reused < first.prompt_tokens
    engine.close()


def test_progress_is_reported_inside_one_long_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One chunk for the whole prompt: reports inside it come from the graph nodes llama.cpp computes.
    monkeypatch.setattr(generation, "PROGRESS_INTERVAL_S", 0.0)
    model = write_tiny_model(tmp_path / "deep.gguf", n_layer=8)
    engine = local(model, n_batch=2048)
    events, result = stream_events(engine, prompt(20))
    reports = [e for e in events if isinstance(e, PromptProgress)]
    total = result.prompt_tokens_evaluated
    assert_in_order(reports, total)
    inside = [r.done for r in reports if 0 < r.done < total]
    assert len(set(inside)) >= 4  # an 8-layer graph gives many steps, not just start and end
    engine.close()


def test_ctrl_c_inside_a_long_chunk_stops_it_and_keeps_the_cache_consistent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generation, "PROGRESS_INTERVAL_S", 0.0)
    model = write_tiny_model(tmp_path / "deep.gguf", n_layer=8)
    engine = local(model, n_batch=2048)
    seen: list[PromptProgress] = []

    def interrupt(report: PromptProgress) -> None:
        seen.append(report)
        if 0 < report.done < report.total:
            raise KeyboardInterrupt  # what SIGINT does to the main thread inside the node callback

    gen = engine.stream(prompt(20), GREEDY, progress=interrupt)
    with pytest.raises(KeyboardInterrupt):
        list(gen)
    assert seen[-1].done < seen[-1].total  # stopped inside the only chunk
    _, result = stream_events(engine, prompt(20))  # the engine still works, from a consistent cache
    assert result.tokens_generated > 0
    assert result.prompt_tokens_reused + result.prompt_tokens_evaluated == result.prompt_tokens
    engine.close()


def test_a_broken_progress_display_does_not_break_the_reply(tiny_model: Path) -> None:
    engine = local(tiny_model, n_batch=16)

    def broken(_report: PromptProgress) -> None:
        raise RuntimeError("display gone")

    gen = engine.stream(prompt(4), GREEDY, progress=broken)
    assert "".join(gen) and gen.result.finish_reason in ("length", "eos")
    engine.close()


def test_progress_line_text() -> None:
    p = PromptProgress(1024, 3323, 25.0)
    assert p.describe() == "prompt 1,024/3,323 tok, 41 tok/s, 56 s left"
    assert p.describe(since_s=10) == "prompt 1,024/3,323 tok, 41 tok/s, 46 s left"
    assert PromptProgress(0, 0, 3.0).describe(since_s=1.5) == "reading prompt, 4.5 s"
    assert PromptProgress(0, 500, 0.2).describe() == "prompt 0/500 tok, 0.2 s"


# --- CLI: a \r line on a terminal's stderr, nothing when stderr is not a terminal -----------------------


def run_reply(tmp_path: Path, model: Path, *, tty: bool) -> tuple[int, str, str]:
    env = {**os.environ, "RPCHAT_HOME": str(tmp_path / "home"), "COLUMNS": "100"}
    card = make_card(tmp_path)
    args = [sys.executable, "-m", "rpchat", "reply", str(card), "--chat", str(tmp_path / "c.jsonl"),
            "--say", "hello " * 40, "--model", str(model), "--max-new", "4", "--n-ctx", "2048", "--seed", "7"]
    if not tty:
        res = subprocess.run(args, check=False, env=env, capture_output=True, text=True, timeout=300)
        return res.returncode, res.stdout, res.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    err = b""
    while True:
        ready, _, _ = select.select([master], [], [], 300)
        if not ready:
            proc.kill()
            raise AssertionError("rpchat reply hung")
        try:
            data = os.read(master, 4096)
        except OSError:  # the pty closes when the child exits
            break
        if not data:
            break
        err += data
    out = proc.stdout.read().decode() if proc.stdout else ""
    os.close(master)
    return proc.wait(60), out, err.decode("utf-8", "replace")


def test_cli_reply_shows_progress_on_a_terminal_and_clears_it(tmp_path: Path, tiny_model: Path) -> None:
    rc, out, err = run_reply(tmp_path, tiny_model, tty=True)
    assert rc == 0, err
    assert "\rrpchat: prompt 0/" in err  # drawn at once, before the first chunk is read
    shown = [part for part in err.split("\r") if part.startswith("rpchat: prompt ")]
    assert shown[-1].startswith("rpchat: prompt ") and "\x1b[K" in err
    # The line is cleared before the summary, which starts on a clean line.
    summary = err.rindex("rpchat: ")
    assert err[:summary].endswith("\r\x1b[K") or err[:summary].endswith("\n")
    assert "tok/s, prompt" in err[summary:]
    # The reply itself went to stdout (a random-weight model may well end it at once), without progress in it.
    assert "prompt" not in out and "\x1b" not in out
    saved = load_chat(tmp_path / "c.jsonl").turns[-1]
    assert not saved.is_user and saved.text == out.strip()


def test_cli_reply_without_a_terminal_prints_no_progress_line(tmp_path: Path, tiny_model: Path) -> None:
    rc, _, err = run_reply(tmp_path, tiny_model, tty=False)
    assert rc == 0, err
    assert "\r" not in err and "\x1b" not in err and "rpchat: prompt 0/" not in err


# --- TUI: the status line while reading and after the reply ----------------------------------------------


class PausingEngine:
    """The real tiny engine; its first prompt report holds the generating thread until released."""

    def __init__(self, inner: LocalEngine) -> None:
        self.inner = inner
        self.reading = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def stream(self, prompt, sampling, stop=(), cancel=None, progress=None):  # type: ignore[no-untyped-def]
        def report(p: PromptProgress) -> None:
            progress(p)
            if not self.reading.is_set():
                self.reading.set()
                self.release.wait(30)

        return self.inner.stream(prompt, sampling, stop, cancel, report)


def test_status_line_shows_reading_then_the_reply_cost(tmp_path: Path, tiny_model: Path) -> None:
    from rpchat.tui.app import RpchatApp

    write_profile_config(tiny_config(tiny_model))
    profile().cards_dir.mkdir(parents=True)
    make_card(profile().cards_dir, "Zephyrine")
    engine = PausingEngine(LocalEngine(LocalSettings(tiny_model, n_ctx=1024, n_threads=1)))

    async def go() -> None:
        app = RpchatApp(engine_factory=lambda _cfg: engine)  # type: ignore[arg-type,return-value]
        async with app.run_test(size=(160, 40)) as pilot:
            screen = await open_chat_from_library(pilot, app, "Zephyrine")
            await wait_for(pilot, lambda: app.engine_state == "ready")
            screen.input.text = "Where am I?"
            await pilot.press("enter")
            await wait_for(pilot, lambda: "prompt 0/" in screen.status_text())
            status = screen.status_text()
            assert "tok" in status and "stops)" in status
            engine.release.set()
            await wait_for(pilot, lambda: not screen.generating)
            after = screen.status_text()
            result = screen.session.last_result
            assert result is not None and result.tokens_generated
            read, reused = result.prompt_tokens_evaluated, result.prompt_tokens_reused
            assert f"({read:,} read, {reused:,} reused)" in after and "1st token " in after
            assert "prompt 0/" not in after
            # Regenerating reads almost nothing again: the status line says so.
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: not screen.generating and screen.session.last_result is not result)
            again = screen.session.last_result
            assert again is not None and again.prompt_tokens_reused > again.prompt_tokens_evaluated
            assert f"({again.prompt_tokens_evaluated:,} read, {again.prompt_tokens_reused:,} reused)" in (
                screen.status_text())

    asyncio.run(go())


def test_esc_while_the_prompt_is_read_leaves_the_chat_as_it_was(tmp_path: Path, tiny_model: Path) -> None:
    from rpchat.chat.store import load_chat
    from rpchat.tui.app import RpchatApp

    write_profile_config(tiny_config(tiny_model))
    profile().cards_dir.mkdir(parents=True)
    make_card(profile().cards_dir, "Zephyrine")
    engine = PausingEngine(LocalEngine(LocalSettings(tiny_model, n_ctx=1024, n_threads=1, n_batch=16)))

    async def go() -> None:
        app = RpchatApp(engine_factory=lambda _cfg: engine)  # type: ignore[arg-type,return-value]
        async with app.run_test(size=(160, 40)) as pilot:
            screen = await open_chat_from_library(pilot, app, "Zephyrine")
            await wait_for(pilot, lambda: app.engine_state == "ready")
            screen.input.text = "Where am I?"
            await pilot.press("enter")
            await wait_for(pilot, lambda: "prompt 0/" in screen.status_text())
            before = [t.text for t in load_chat(screen.session.path).turns]
            await pilot.press("escape")
            engine.release.set()
            await wait_for(pilot, lambda: not screen.generating)
            result = screen.session.last_result
            assert result is not None and result.finish_reason == "cancelled" and not result.text
            assert result.prompt_tokens_evaluated < result.prompt_tokens - result.prompt_tokens_reused
            after = [t.text for t in load_chat(screen.session.path).turns]
            assert after == before[:-1] and before[-1] == ""  # the empty reply placeholder is gone
            assert after[-1] == "Where am I?"
            assert "prompt 0/" not in screen.status_text() and "stops)" not in screen.status_text()

    asyncio.run(go())


def test_status_line_says_what_a_loading_model_is_doing(tmp_path: Path, tiny_model: Path) -> None:
    from rpchat.tui.app import RpchatApp

    write_profile_config(tiny_config(tiny_model))
    profile().cards_dir.mkdir(parents=True)
    make_card(profile().cards_dir, "Zephyrine")
    warming = threading.Event()
    release = threading.Event()

    class SlowLoad(LocalEngine):
        def load(self, progress=None) -> None:  # type: ignore[no-untyped-def]
            def report(value: float, stage: str = "") -> None:
                progress(value, stage)
                if stage.startswith("warming up"):
                    warming.set()
                    release.wait(30)

            super().load(report)

    engine = SlowLoad(LocalSettings(tiny_model, n_ctx=1024, n_threads=1))

    async def go() -> None:
        app = RpchatApp(engine_factory=lambda _cfg: engine)
        async with app.run_test(size=(160, 40)) as pilot:
            screen = await open_chat_from_library(pilot, app, "Zephyrine")
            await wait_for(pilot, lambda: "(warming up:" in screen.status_text())
            assert "loading model 97%" in screen.status_text()
            release.set()
            await wait_for(pilot, lambda: app.engine_state == "ready")

    asyncio.run(go())


# --- a real llama-server: its return_progress reports ---------------------------------------------------


@pytest.fixture
def llama_server(tmp_path: Path, llama_server_binary: Path) -> Iterator[str]:
    """The real llama-server on a tiny model, with small batches so a prompt takes several of them."""
    from llamaserver import LlamaServer

    model = write_tiny_model(tmp_path / "server.gguf", n_layer=2)
    server = LlamaServer(llama_server_binary, model, tmp_path / "server.log", n_ctx=2048, threads=1,
                         extra=["-b", "32", "-ub", "32"])
    try:
        yield server.url
    finally:
        server.stop()


def test_llama_server_prompt_progress_arrives_in_order_and_ends_at_the_total(llama_server: str) -> None:
    from rpchat.engine.remote import RemoteEngine

    engine = RemoteEngine(llama_server, "llama.cpp")
    engine.load()
    # The default ranges (-1, "the whole context") are translated for this server, which rejects -1.
    sampling = Sampling(temperature=0.0, max_tokens=4)
    events: list[object] = []
    gen = engine.stream(prompt(10), sampling, progress=events.append)
    for piece in gen:
        events.append(piece)  # noqa: PERF402 - interleaved with the progress reports
    reports = [e for e in events if isinstance(e, PromptProgress)]
    first_text = next(i for i, e in enumerate(events) if isinstance(e, str))
    assert all(isinstance(e, PromptProgress) for e in events[:first_text])
    assert reports[0] == PromptProgress(0, 0, reports[0].elapsed_s)  # sent before the server says anything
    server = [r for r in reports if r.total]
    total = gen.result.prompt_tokens_evaluated
    assert len(server) >= 3 and total > 32 * 2  # the server read it in several batches of 32
    assert_in_order(server, total)
    # The second request reuses the server's cache: only the new tokens are work.
    events.clear()
    gen = engine.stream(prompt(10) + [Segment(" and more", "user")], sampling, progress=events.append)
    list(gen)
    server = [e for e in events if isinstance(e, PromptProgress) and e.total]
    assert server and server[-1].done == server[-1].total == gen.result.prompt_tokens_evaluated < total
    engine.close()



def test_a_server_that_reports_nothing_gets_elapsed_time_only(tmp_path: Path) -> None:
    # KoboldCpp (and OpenAI-compatible servers) say nothing while reading: one "reading, so long"
    # report when the request goes out; the status line's clock moves on from there.
    from http.server import ThreadingHTTPServer

    from test_remote_protocols import Fake, _Handler, connect, kobold_routes

    state = Fake()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.fake = state  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        kobold_routes(state)
        engine = connect(state)
        events: list[object] = []
        gen = engine.stream(prompt(2), GREEDY, progress=events.append)
        for piece in gen:
            events.append(piece)  # noqa: PERF402 - interleaved with the progress reports
        assert isinstance(events[0], PromptProgress) and events[0].total == 0 and events[0].done == 0
        assert all(isinstance(e, str) for e in events[1:]) and len(events) > 1
        assert events[0].describe(since_s=2.0).startswith("reading prompt, 2.")
    finally:
        server.shutdown()
        server.server_close()


# --- the synthetic model behind `rpchat bench --shape 7b` (a small shape here; never the 7B) -----------

SPM_VOCAB = Path("/tmp/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf")


def test_bench_shape_without_the_vocabulary_is_a_one_line_error(tmp_path: Path) -> None:
    env = {**os.environ, "RPCHAT_HOME": str(tmp_path / "home"), "LLAMA_CPP_DIR": str(tmp_path / "none")}
    res = subprocess.run([sys.executable, "-m", "rpchat", "bench", "--shape", "7b", "--vocab",
                          str(tmp_path / "missing.gguf")], env=env, capture_output=True, text=True, check=False)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "ggml-vocab-llama-spm.gguf" in res.stderr and "--vocab" in res.stderr
    assert not list((tmp_path / "home").rglob("*.gguf"))  # nothing half-written


def test_synthetic_model_of_a_small_shape_loads_and_generates(tmp_path: Path) -> None:
    if not SPM_VOCAB.is_file():
        pytest.skip(f"llama.cpp's vocabulary file is not at {SPM_VOCAB}")
    from rpchat.engine.synthetic import Shape, write_synthetic_model

    shape = Shape("small", 2, 256, 4, 2, 512, 32000, 4096, 10000.0)
    path = write_synthetic_model(tmp_path / "small.gguf", shape, SPM_VOCAB)
    engine = local(path, n_ctx=1024)
    assert engine.info.total_layers == 2
    assert engine.tokenize("Hello world") == [15043, 3186]  # LLaMA's SentencePiece ids
    gen = engine.stream(prompt(2), Sampling(temperature=0.8, max_tokens=8, seed=1))
    list(gen)
    assert gen.result.tokens_generated >= 1 and gen.result.finish_reason in ("length", "eos")
    engine.close()
