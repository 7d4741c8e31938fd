"""The remote engine against servers that misbehave on purpose (tests/hostile_server.py, loopback only).

In every case the user gets one clear line, memory stays bounded (traced peak well under the size of
what the server throws), and what the reply had so far is kept. The chat, the CLI and the TUI are
checked on the worst cases.

``python3 tests/test_remote_hostile.py`` prints the table in the README's reliability section.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hostile_server import FINAL, MIB, Call, HostileServer, gzip_bomb, llama_routes, make_cert, sse, stream

from rpchat.engine.base import Result, Sampling
from rpchat.engine.remote import RemoteEngine
from rpchat.errors import EngineError
from rpchat.prompt.segments import Segment

PEAK_LIMIT = 48 * MIB  # traced Python memory for one case; the server throws 100 MB to 1 GiB at it
PROMPT = [Segment("### Instruction: be brief\n### Response:", "template")]


@dataclass(frozen=True)
class Outcome:
    line: str  # the one line the user sees (the error, or the engine's notice), "" when all went well
    text: str  # the reply text kept
    finish: str
    peak: int  # traced peak bytes
    result: Result | None = None
    n_ctx: int = 0


@dataclass(frozen=True)
class Case:
    id: str
    title: str  # for the README table
    setup: Callable[[HostileServer], None]
    expect: str  # must appear in the line
    kept: str = ""  # the reply text that must survive
    engine: dict[str, Any] = field(default_factory=dict)  # RemoteEngine keyword arguments
    tls: str | None = None  # the host the server's certificate is for
    max_tokens: int = 32


# --- the servers' misbehaviours -----------------------------------------------------------------------


def route(method: str, path: str, answer: Callable[[Call], None]) -> Callable[[HostileServer], None]:
    def setup(server: HostileServer) -> None:
        llama_routes(server)
        server.routes[(method, path)] = answer

    return setup


def huge_line(call: Call) -> None:
    call.start_stream()
    call.chunk(sse({"content": "Hel"}))
    call.chunk(b"data: ")
    for _ in range(100):  # 100 MB, no newline
        if not call.chunk(b"x" * MIB):
            return
    call.end()


def endless(event: bytes, pause: float = 0.0, first: bytes = b"") -> Callable[[Call], None]:
    def answer(call: Call) -> None:
        call.start_stream()
        if first and not call.chunk(first):
            return
        for _ in range(1_000_000):
            if not call.chunk(event):
                return
            if pause:
                time.sleep(pause)

    return answer


def raw_events(*events: bytes) -> Callable[[Call], None]:
    return lambda call: stream(call, list(events))


def deep_json(call: Call) -> None:
    call.send(200, b"[" * 100_000 + b"]" * 100_000, {"Content-Type": "application/json"})


def busy(status: int, retry_after: str, times: int) -> Callable[[HostileServer], None]:
    def setup(server: HostileServer) -> None:
        llama_routes(server)
        good = server.routes[("POST", "/completion")]
        count = [0]

        def answer(call: Call) -> None:
            count[0] += 1
            if count[0] > times:
                good(call)
            else:
                call.json({"error": {"message": "slow down"}}, status, {"Retry-After": retry_after})

        server.routes[("POST", "/completion")] = answer

    return setup


def bomb(fill: bytes, size: int) -> Callable[[Call], None]:
    def answer(call: Call) -> None:
        call.send(200, gzip_bomb(fill, size), {"Content-Type": "text/event-stream", "Content-Encoding": "gzip"})

    return answer


def redirect(path: str) -> Callable[[Call], None]:
    return lambda call: call.send(307, b"", {"Location": f"http://other.example:8080{path}"})


def absurd_counts(server: HostileServer) -> None:
    llama_routes(server)
    server.routes[("POST", "/tokenize")] = lambda call: call.json({"tokens": list(range(50_000))})
    final = dict(FINAL, tokens_evaluated=-7, timings={"prompt_n": -3, "cache_n": 10**20, "predicted_n": 10**20})
    server.routes[("POST", "/completion")] = raw_events(sse({"content": "Hi"}), sse(final))


HOSTILE_TEXT = "[bold red]boom[/] \x1b[2J\x1b]0;pwned\x07 <script>"

CASES = [
    Case("huge-line", "an SSE line of 100 MB with no newline", route("POST", "/completion", huge_line),
         "the server sent a line longer than 4 MiB; stopped reading", kept="Hel"),
    Case("endless-tokens", "a stream that never ends (tokens forever)",
         route("POST", "/completion", endless(sse({"content": "a"}))),
         "the server kept sending past the token budget (128 pieces); stopped reading", kept="a" * 128),
    Case("endless-pings", "a stream that never ends (keep-alive pings forever)",
         route("POST", "/completion", endless(b": ping\n\n", 0.02, first=sse({"content": "Hel"}))),
         "the server sent nothing new for 1 s (engine.stream_timeout); stopped waiting", kept="Hel",
         engine={"stream_timeout": 1.0}),
    Case("endless-empty", "a stream that never ends (empty events forever)",
         route("POST", "/completion", endless(sse({"content": ""}), 0.01, first=sse({"content": "Hel"}))),
         "the server sent nothing new for 1 s (engine.stream_timeout)", kept="Hel", engine={"stream_timeout": 1.0}),
    Case("silent-load", "a server that accepts and never answers (loading)", route("GET", "/props", Call.hang),
         "no answer within 0.5 s (engine.timeout)", engine={"timeout": 0.5}),
    Case("silent-reply", "a server that never answers (the reply)", route("POST", "/completion", Call.hang),
         "no answer within 1 s (engine.stream_timeout)", engine={"stream_timeout": 1.0}),
    Case("bad-utf8-nul", "invalid UTF-8 and NUL bytes in text",
         route("POST", "/completion", raw_events(b'data: {"content": "caf\xc3 \xff\xfe ok"}\n\n',
                                                 b'data: {"content": " nul\\u0000 here"}\n\n',
                                                 b'data: {"content": "raw\x00nul"}\n\n', sse(FINAL))),
         "", kept="caf\ufffd \ufffd\ufffd ok nul\x00 here"),
    Case("deep-json-answer", "JSON nested 100,000 deep (an answer)", route("GET", "/props", deep_json),
         "/props: the server sent JSON nested too deeply to read"),
    Case("deep-json-event", "JSON nested 100,000 deep (a stream event)",
         route("POST", "/completion", raw_events(sse({"content": "Hel"}),
                                                 b"data: " + b"[" * 100_000 + b"]" * 100_000 + b"\n\n")),
         "the server sent JSON nested too deeply to read", kept="Hel"),
    Case("negative-n-ctx", "a negative n_ctx", lambda s: llama_routes(s, n_ctx=-5),
         "the server reports a context of -5; assuming 4096", kept="Hello"),
    Case("absurd-n-ctx", "an absurd n_ctx", lambda s: llama_routes(s, n_ctx=10**30),
         "the server reports a context of 1,000,000,000,000,000,000,000,000,000,000; assuming 4096", kept="Hello"),
    Case("absurd-counts", "negative and absurd token counts", absurd_counts,
         "token counts are estimates", kept="Hi"),
    Case("redirect-load", "a redirect to another host (probing)", route("GET", "/props", redirect("/props")),
         "the server redirects /props to http://other.example:8080/props: rpchat does not follow redirects"),
    Case("redirect-reply", "a redirect to another host (the reply)",
         route("POST", "/completion", redirect("/completion")),
         "the server redirects /completion to http://other.example:8080/completion"),
    Case("retry-short", "HTTP 429 with Retry-After: 1", busy(429, "1", 1), "", kept="Hello"),
    Case("retry-twice", "HTTP 429 with Retry-After: 1, twice", busy(429, "1", 2),
         "the server is busy (HTTP 429 on /completion: slow down); it asks to retry in 1 s (at "),
    Case("retry-long", "HTTP 503 with Retry-After: 3600", busy(503, "3600", 1),
         "the server is not ready yet (HTTP 503 on /completion: slow down); it asks to retry in 60 min (at "),
    Case("gzip-bomb-answer", "a gzip bomb (1 GiB of zeros as /props)",
         route("GET", "/props", bomb(b"\0", 1024 * MIB)), "the answer to /props is larger than 8 MiB"),
    Case("gzip-bomb-stream", "a gzip bomb (1 GiB without a newline as the reply)",
         route("POST", "/completion", bomb(b"\0", 1024 * MIB)), "the server sent a line longer than 4 MiB"),
    Case("gzip-bomb-lines", "a gzip bomb (256 MiB of empty lines as the reply)",
         route("POST", "/completion", bomb(b"\n", 256 * MIB)), "the server sent more than 8 MiB for one reply"),
    Case("comment-flood", "a stream of 2 million comment lines",
         route("POST", "/completion", lambda call: stream(call, [sse({"content": "Hel"})] + [b":\n" * 65536] * 32)),
         "the server sent 100,000 lines with nothing in them; stopped reading", kept="Hel"),
    Case("tls-wrong-host", "a TLS certificate for the wrong host (its CA trusted)", llama_routes,
         "the server's TLS certificate failed the check (IP address mismatch, certificate is not valid for "
         "'127.0.0.1'); check the server URL", tls="wrong.example", engine={"ca_bundle": "CERT"}),
    Case("tls-untrusted", "a self-signed TLS certificate, CA not trusted", llama_routes,
         "the server's TLS certificate failed the check (self-signed certificate)", tls="127.0.0.1"),
    Case("tls-ca-bundle", "a private CA given as engine.ca_bundle", llama_routes, "", kept="Hello",
         tls="127.0.0.1", engine={"ca_bundle": "CERT"}),
    Case("tls-verify-off", "TLS checks turned off (engine.tls_verify: false)", llama_routes,
         "TLS certificate checks are off (engine.tls_verify: false)", kept="Hello", tls="wrong.example",
         engine={"tls_verify": False}),
    Case("markup-escapes", "markup and escape sequences in the reply", route("POST", "/completion", raw_events(
        sse({"content": HOSTILE_TEXT}), sse(FINAL))), "", kept=HOSTILE_TEXT),
]  # fmt: skip


# --- running a case -----------------------------------------------------------------------------------


def run_case(case: Case, certs: Path) -> tuple[Outcome, HostileServer]:
    tls = make_cert(certs, case.tls) if case.tls else None
    kwargs = {k: (str(tls[0]) if v == "CERT" and tls else v) for k, v in case.engine.items()}
    if "bomb" in case.id:
        gzip_bomb(b"\0", 1024 * MIB), gzip_bomb(b"\n", 256 * MIB)  # made once, before tracing starts
    with HostileServer(tls=tls) as server:
        case.setup(server)
        tracemalloc.start()
        try:
            outcome = _converse(server.url, kwargs, case.max_tokens)
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        return Outcome(outcome.line, outcome.text, outcome.finish, peak, outcome.result, outcome.n_ctx), server


def _converse(url: str, kwargs: dict[str, Any], max_tokens: int) -> Outcome:
    engine = RemoteEngine(url, **kwargs)
    try:
        engine.load()
    except EngineError as e:
        return Outcome(str(e), "", "not loaded", 0)
    try:
        engine.count_tokens("Hello world")
        gen = engine.stream(PROMPT, Sampling(max_tokens=max_tokens))
        text = "".join(gen)
    except EngineError as e:
        return Outcome(str(e), "", "refused", 0, n_ctx=engine.n_ctx)
    finally:
        engine.close()
    r = gen.result
    assert text == r.text
    return Outcome(r.error or engine.info.notice or "", r.text, r.finish_reason or "", 0, r, engine.n_ctx)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_server_gets_one_clear_line_and_bounded_memory(case: Case, tmp_path: Path) -> None:
    out, server = run_case(case, tmp_path / "certs")
    assert case.expect in out.line, out.line
    assert "\n" not in out.line and "\x1b" not in out.line
    if not case.expect:
        assert out.finish == "eos" and out.line == "", out.line
    assert out.text.startswith(case.kept) if case.kept else out.text == ""
    assert out.peak < PEAK_LIMIT, f"traced peak {out.peak / MIB:.1f} MiB"
    if case.id.startswith("redirect"):
        assert not any("other" in r.headers.get("host", "") for r in server.requests)


def test_a_stream_cut_off_for_its_budget_keeps_a_bounded_reply(tmp_path: Path) -> None:
    out, _ = run_case(CASES[1], tmp_path)
    assert out.text == "a" * 128 and out.finish == "error"


def test_a_short_retry_after_is_waited_once_and_a_long_one_is_not(tmp_path: Path) -> None:
    by_id = {c.id: c for c in CASES}
    _, short = run_case(by_id["retry-short"], tmp_path)
    _, twice = run_case(by_id["retry-twice"], tmp_path)
    _, long = run_case(by_id["retry-long"], tmp_path)
    assert short.paths().count("/completion") == 2
    assert twice.paths().count("/completion") == 2
    assert long.paths().count("/completion") == 1


def test_insane_context_and_counts_are_not_believed(tmp_path: Path) -> None:
    by_id = {c.id: c for c in CASES}
    for case_id in ("negative-n-ctx", "absurd-n-ctx"):
        out, _ = run_case(by_id[case_id], tmp_path)
        assert out.n_ctx == 4096
    out, _ = run_case(by_id["absurd-counts"], tmp_path)
    r = out.result
    assert r is not None
    # -7 prompt tokens and 10**20 generated are dropped: the figures fall back to what was seen.
    assert r.prompt_tokens == 0 and r.tokens_generated == 1 and r.prompt_tokens_reused == 0


def test_a_ca_bundle_that_cannot_be_read_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate")
    for bundle, why in ((tmp_path / "missing.pem", "no such file or directory"), (tmp_path / "junk.pem", "no certificate")):
        with pytest.raises(EngineError) as err:
            RemoteEngine("https://127.0.0.1:9", ca_bundle=str(bundle)).load()
        assert str(err.value).startswith(f"https://127.0.0.1:9: engine.ca_bundle: cannot use {bundle} ("), err.value
        assert why in str(err.value)


# --- the chat, the CLI and the TUI on the worst cases ----------------------------------------------------


def _cli_reply(tmp_path: Path, url: str, say: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from session_support import make_card

    from rpchat.cli import main

    card = make_card(tmp_path, "Marisol")
    code = main(["reply", str(card), "--chat", str(tmp_path / "c.jsonl"), "--say", say, "--engine", url,
                 "--max-new", "32"])  # fmt: skip
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("case_id", ["huge-line", "gzip-bomb-stream", "deep-json-event", "endless-tokens"])
def test_cli_reply_from_a_hostile_stream_says_one_line_and_keeps_the_chat(
    case_id: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rpchat.chat.store import load_chat

    case = {c.id: c for c in CASES}[case_id]
    with HostileServer() as server:
        llama_routes(server)
        good = server.routes[("POST", "/completion")]
        case.setup(server)
        hostile = server.routes[("POST", "/completion")]
        server.routes[("POST", "/completion")] = good
        assert _cli_reply(tmp_path, server.url, "first", capsys)[0] == 0  # a good reply first
        before = load_chat(tmp_path / "c.jsonl")
        server.routes[("POST", "/completion")] = hostile
        code, _out, err = _cli_reply(tmp_path, server.url, "second", capsys)
    errors = [line for line in err.splitlines() if line.startswith("rpchat: error:")]
    assert code == 2 and len(errors) == 1 and case.expect in errors[0], err
    after = load_chat(tmp_path / "c.jsonl")
    # Everything the chat had is still there, and the partial reply is saved marked unfinished.
    assert before.turns[-1].text == "Hello"
    assert [t.text for t in after.turns[: len(before.turns)]] == [t.text for t in before.turns]
    if case.kept:
        assert after.turns[-2].text == "second"
        assert after.turns[-1].text.startswith(case.kept) and after.turns[-1].unfinished
    else:  # nothing came: no empty reply is left behind
        assert after.turns[-1].text == "second" and len(after.turns) == len(before.turns) + 1


def test_cli_reply_with_invalid_utf8_and_nul_saves_a_valid_chat(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from rpchat.chat.store import load_chat

    case = {c.id: c for c in CASES}["bad-utf8-nul"]
    with HostileServer() as server:
        case.setup(server)
        code, out, err = _cli_reply(tmp_path, server.url, "hi", capsys)
    assert code == 0, err
    assert "\x00" not in out and "\u2400" in out  # NUL shown as a visible symbol on the terminal
    assert load_chat(tmp_path / "c.jsonl").turns[-1].text.startswith(case.kept)  # the data itself is kept
    for line in (tmp_path / "c.jsonl").read_text("utf-8").splitlines():
        json.loads(line)


def test_tui_shows_markup_and_escapes_from_the_server_inert_and_stays_responsive(tmp_path: Path) -> None:
    from session_support import make_card, open_chat_from_library, wait_for, write_profile_config

    from rpchat.config import Config, EngineConfig
    from rpchat.paths import profile
    from rpchat.tui.app import RpchatApp
    from rpchat.tui.transcript import TurnView

    def endless_after_hostile(call: Call) -> None:
        endless(b": ping\n\n", 0.02, first=sse({"content": HOSTILE_TEXT}))(call)

    with HostileServer() as server:
        route("POST", "/completion", endless_after_hostile)(server)
        write_profile_config(Config(engine=EngineConfig(kind="remote", remote_url=server.url), max_new_tokens=32))
        profile().cards_dir.mkdir(parents=True)
        make_card(profile().cards_dir, "Zephyrine")

        async def go() -> None:
            app = RpchatApp()
            async with app.run_test(size=(120, 40)) as pilot:
                screen = await open_chat_from_library(pilot, app, "Zephyrine")
                await wait_for(pilot, lambda: app.engine_state == "ready")
                screen.input.focus()
                await pilot.press(*"hi", "enter")
                await wait_for(pilot, lambda: "boom" in getattr(screen.query("StreamingTurn").first(), "text", ""))
                await pilot.press("escape")  # the server would ping forever: the user stops it
                await wait_for(pilot, lambda: not screen.generating)
                await pilot.pause()
                last = screen.query(TurnView).last()
                shown = str(last.render())
                assert "[bold red]boom[/]" in shown and "\u241b[2J" in shown and "\x1b" not in shown
                assert "\x07" not in shown
                saved = screen.session.chat.turns[-1]
                assert saved.text == HOSTILE_TEXT and saved.unfinished  # the data is kept as it came

        asyncio.run(go())


# --- the README table -----------------------------------------------------------------------------------


def _table() -> Iterator[str]:
    import tempfile

    yield "| Case | What the user gets | Reply kept | Traced peak |"
    yield "|---|---|---|---|"
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            out, _ = run_case(case, Path(tmp))
        line = out.line.split(": ", 1)[-1] if out.line.startswith("http") else out.line
        kept = repr(out.text[:20]) + ("..." if len(out.text) > 20 else "") if out.text else "-"
        shown = line or f"the reply ({out.finish})"
        yield f"| {case.title} | {shown} | {kept} | {out.peak / MIB:.1f} MiB |"


if __name__ == "__main__":
    import os

    os.environ.setdefault("RPCHAT_HOME", "/tmp/rpchat-hostile-table")
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for row in _table():
        print(row, flush=True)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) / 1024
    print(f"\npeak RSS growth over all cases: {grown:.0f} MiB")
