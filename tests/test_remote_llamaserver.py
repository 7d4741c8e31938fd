"""The remote engine against the real ``llama-server`` (built from the llama.cpp that the installed
llama-cpp-python vendors, see llamaserver.py) running the Gemma 3 270M demo model on loopback.

One server serves the module; only the crash test starts (and kills) its own.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from llamaserver import LlamaServer

from rpchat.chat.store import ChatStore
from rpchat.engine.base import Sampling
from rpchat.engine.presets import SHIPPED_DIR, preset_from_file
from rpchat.engine.remote import RemoteEngine
from rpchat.prompt.segments import Segment

ROOT = Path(__file__).resolve().parent.parent
CARD = ROOT / "cards" / "marisol_vega.png"
N_CTX = 2048
FIGURES = re.compile(r"^rpchat: (\d+) tokens, .* prompt (\d+) evaluated / (\d+) reused, finish: (\w+)$")


@pytest.fixture(scope="module")
def server(
    llama_server_binary: Path, demo_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServer]:
    srv = LlamaServer(llama_server_binary, demo_model, tmp_path_factory.mktemp("llama-server") / "server.log",
                      n_ctx=N_CTX)  # fmt: skip
    yield srv
    srv.stop()


@pytest.fixture
def engine(server: LlamaServer) -> Iterator[RemoteEngine]:
    eng = RemoteEngine(server.url)
    eng.load()
    yield eng
    eng.close()


def rpchat(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rpchat", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300, check=False)  # fmt: skip


def figures(stderr: str) -> tuple[int, int, int, str]:
    """(generated, evaluated, reused, finish) from the last line `rpchat reply` prints."""
    match = FIGURES.match(stderr.strip().splitlines()[-1])
    assert match, stderr
    return int(match[1]), int(match[2]), int(match[3]), match[4]


def server_tokens(server: LlamaServer, text: str, *, special: bool, bos: bool = True) -> list[int]:
    """How the server itself tokenizes ``text`` (with BOS first, as for a prompt, unless ``bos`` is False)."""
    body = {"content": text, "add_special": bos, "parse_special": special}
    answer = httpx.post(server.url + "/tokenize", json=body, timeout=30)
    answer.raise_for_status()
    return list(answer.json()["tokens"])


def test_connects_and_reads_the_server_context(engine: RemoteEngine) -> None:
    assert engine.api == "llama.cpp"
    assert engine.n_ctx == N_CTX
    assert engine.info.model_name == "gemma-3-270m-q4_k_m.gguf"
    assert engine.exact_token_count and engine.count_tokens("Hello world") == 2


def test_two_turns_through_rpchat_reply_with_the_default_preset(server: LlamaServer, tmp_path: Path) -> None:
    chat = tmp_path / "chat.jsonl"
    first = rpchat("reply", str(CARD), "--chat", str(chat), "--say", "hello", "--engine", server.url,
                   "--max-new", "8")  # fmt: skip
    assert first.returncode == 0, first.stderr
    generated, _evaluated, _reused, finish = figures(first.stderr)
    assert generated > 0 and finish in ("eos", "stop", "length")
    assert first.stdout.strip()

    second = rpchat("reply", str(CARD), "--chat", str(chat), "--say", "Where am I?", "--engine", server.url,
                    "--max-new", "8")  # fmt: skip
    assert second.returncode == 0, second.stderr
    _, evaluated2, reused2, _ = figures(second.stderr)
    # cache_prompt: the second turn's prompt starts with the first one, which the server still holds.
    assert reused2 > 0 and evaluated2 < (evaluated2 + reused2) / 2

    turns = ChatStore(chat).open().turns
    assert [t.is_user for t in turns] == [False, True, False, True, False]
    assert turns[1].text == "hello" and turns[3].text == "Where am I?"
    assert turns[2].text == first.stdout.strip() and turns[4].text == second.stdout.strip()
    assert not any(t.unfinished for t in turns)


def test_reply_streams_piece_by_piece(engine: RemoteEngine) -> None:
    prompt = [Segment("### Instruction:\nWrite a story.\n\n### Response:\n", "template")]
    gen = engine.stream(prompt, Sampling(temperature=0.0, max_tokens=12))
    pieces = list(gen)
    r = gen.result
    assert len(pieces) > 1 and r.text == "".join(pieces)
    assert r.error is None and r.finish_reason in ("length", "eos", "stop")
    assert r.tokens_generated >= len(pieces) and r.prompt_tokens > 0


def test_cancel_mid_stream_keeps_the_partial_reply_and_stops_the_server(
    engine: RemoteEngine, server: LlamaServer
) -> None:
    prompt = [Segment("### Instruction:\nCount from 1 to 500, one number per line.\n\n### Response:\n1\n2\n",
                      "template")]  # fmt: skip
    logged = len(server.log_text())
    cancel = threading.Event()
    gen = engine.stream(prompt, Sampling(temperature=0.0, max_tokens=1500), cancel=cancel)
    pieces = []
    for piece in gen:
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()
    r = gen.result
    assert r.finish_reason == "cancelled" and r.error is None
    assert r.text == "".join(pieces) and len(pieces) == 3
    # The server logs "cancel task" only for a task still generating when the client went away.
    deadline = time.monotonic() + 60  # a liveness bound, not a timing claim
    while "cancel task" not in server.log_text()[logged:] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "cancel task" in server.log_text()[logged:]
    # Its one slot is free again and runs the next request to its end.
    again = engine.stream(prompt, Sampling(temperature=0.0, max_tokens=4))
    assert "".join(again) and again.result.finish_reason in ("length", "eos", "stop")
    assert again.result.tokens_generated <= 4


@pytest.mark.parametrize("user_text", ["I typed </s> here", "end <end_of_turn> and <eos> too"])
def test_control_token_text_typed_by_the_user_stays_text(
    engine: RemoteEngine, server: LlamaServer, user_text: str
) -> None:
    template = ("### Instruction:\nPlay Marisol.\n\n### Input:\nUser: ", "\n\n### Response:\nMarisol:")
    text = template[0] + user_text + template[1]
    as_text = server_tokens(server, text, special=False)
    as_control = server_tokens(server, text, special=True)
    assert len(as_text) != len(as_control), "the model must read this text as control tokens"
    prompt = [Segment(template[0], "template"), Segment(user_text, "user"), Segment(template[1], "template")]
    gen = engine.stream(prompt, Sampling(temperature=0.0, max_tokens=2))
    list(gen)
    # tokens_evaluated is the server's own count of the prompt it ran.
    assert gen.result.prompt_tokens == len(as_text)


def test_control_tokens_in_the_template_are_parsed_and_users_are_not(
    engine: RemoteEngine, server: LlamaServer
) -> None:
    head, user, tail = "<start_of_turn>user\n", "a <end_of_turn> b", "<end_of_turn>\n<start_of_turn>model\n"
    prompt = [Segment(head, "template"), Segment(user, "user"), Segment(tail, "template")]
    gen = engine.stream(prompt, Sampling(temperature=0.0, max_tokens=2))
    list(gen)
    # BOS, the template's control tokens parsed, the user's `<end_of_turn>` as plain text.
    expected = [
        *server_tokens(server, head, special=True),
        *server_tokens(server, user, special=False, bos=False),
        *server_tokens(server, tail, special=True, bos=False),
    ]
    assert len(expected) != len(server_tokens(server, head + user + tail, special=True))
    assert gen.result.prompt_tokens == len(expected)


@pytest.mark.parametrize("preset", sorted(SHIPPED_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_preset_is_accepted_by_the_server(engine: RemoteEngine, preset: Path) -> None:
    sampling = dataclasses.replace(preset_from_file(preset).sampling, max_tokens=3)
    gen = engine.stream([Segment("### Instruction:\nSay hi.\n\n### Response:\n", "template")], sampling)
    list(gen)  # an HTTP 400 raises EngineError here
    assert gen.result.error is None
    assert gen.result.finish_reason in ("length", "eos", "stop")


def test_server_killed_mid_reply_keeps_the_partial_reply(
    llama_server_binary: Path, demo_model: Path, tmp_path: Path
) -> None:
    srv = LlamaServer(llama_server_binary, demo_model, tmp_path / "server.log", n_ctx=N_CTX)
    chat = tmp_path / "chat.jsonl"
    try:
        first = rpchat("reply", str(CARD), "--chat", str(chat), "--say", "hello", "--engine", srv.url,
                       "--max-new", "8")  # fmt: skip
        assert first.returncode == 0, first.stderr
        before = [(t.is_user, t.text) for t in ChatStore(chat).open().turns]
        cmd = [sys.executable, "-m", "rpchat", "reply", str(CARD), "--chat", str(chat), "--say",
               "Tell me the whole history of this island.", "--engine", srv.url, "--max-new", "1500",
               "--preset", "deterministic"]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        streamed = b""
        while not streamed.strip():  # the reply has begun on screen
            piece = proc.stdout.read1(65536)
            assert piece, "the reply ended before the server could be killed"
            streamed += piece
        srv.kill()
        rest, err = proc.communicate(timeout=120)
    finally:
        srv.stop()
    shown = (streamed + rest).decode()
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2
    assert len(lines) == 1, lines
    assert re.fullmatch(
        rf"rpchat: error: {re.escape(srv.url)}: the (server closed the connection|connection was lost) mid-reply "
        r"\(partial reply saved, marked unfinished\)",
        lines[0],
    )
    turns = ChatStore(chat).open().turns
    assert [(t.is_user, t.text) for t in turns[: len(before)]] == before
    assert (
        turns[len(before)].is_user and turns[len(before)].text == "Tell me the whole history of this island."
    )
    partial = turns[-1]
    assert len(turns) == len(before) + 2 and not partial.is_user
    assert partial.unfinished and partial.text and partial.text == shown.strip()
