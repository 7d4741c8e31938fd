"""The remote engine against a real ``python -m llama_cpp.server`` (OpenAI API) on loopback.

The server runs a tiny scripted GGUF whose greedy output cycles " Hello world and you." forever,
so streams are deterministic, never end by EOS, and can be made as long as a test needs.
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from llamaserver import free_port
from tinymodel import token_id, write_tiny_model

from rpchat.engine.base import Sampling
from rpchat.engine.remote import RemoteEngine
from rpchat.errors import EngineError
from rpchat.llamacpp_tools import wait_until_up
from rpchat.prompt.segments import Segment

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette")),
    reason="needs llama-cpp-python[server]",
)

CYCLE = ["▁Hello", "▁world", "▁and", "▁you", "."]
N_CTX = 2048
PROMPT = [Segment("Hello", "user")]
GREEDY = Sampling(temperature=0.0, max_tokens=8)


class Server:
    """One llama_cpp.server process; `stop` kills it."""

    def __init__(self, model: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(self.port), "--n_ctx", str(N_CTX), "--verbose", "False"]  # fmt: skip
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        if wait_until_up(self.proc, self.url + "/v1/models", 90):
            return
        self.stop()
        pytest.fail(f"llama_cpp.server did not start: {log.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def scripted_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ids = [token_id(t) for t in CYCLE]
    successors = dict(zip(ids, ids[1:] + ids[:1]))
    return write_tiny_model(tmp_path_factory.mktemp("remote") / "scripted.gguf", successors=successors)


@pytest.fixture(scope="module")
def server(scripted_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(scripted_model, tmp_path_factory.mktemp("remote-log") / "server.log")
    yield srv
    srv.stop()


@pytest.fixture
def engine(server: Server) -> Iterator[RemoteEngine]:
    eng = RemoteEngine(server.url, n_ctx=N_CTX)
    eng.load()
    yield eng
    eng.close()


def test_detects_openai_api_and_counts_with_the_server_tokenizer(engine: RemoteEngine) -> None:
    assert engine.api == "openai"
    assert "OpenAI" in engine.info.backend
    assert engine.info.model_name == "scripted.gguf"
    assert engine.n_ctx == N_CTX  # llama_cpp.server does not report it: our fallback, with a notice
    assert "assuming 2048" in (engine.info.notice or "")
    assert engine.exact_token_count
    assert engine.count_tokens("Hello world") == 2  # ▁Hello ▁world, without the BOS the server adds
    assert engine.count_tokens("Hello world and you.") == 5


def test_streams_the_reply_piece_by_piece(engine: RemoteEngine) -> None:
    gen = engine.stream(PROMPT, GREEDY)
    pieces = list(gen)
    assert pieces == [" world", " and", " you", ".", " Hello", " world", " and", " you"]
    r = gen.result
    assert r.text == "".join(pieces)
    assert r.finish_reason == "length" and r.error is None
    assert r.tokens_generated == 8
    assert r.ttft_s > 0 and r.gen_time_s > 0


def test_stop_strings_end_the_reply(engine: RemoteEngine) -> None:
    gen = engine.stream(PROMPT, Sampling(temperature=0.0, max_tokens=50), stop=["you."])
    text = "".join(gen)
    assert text.rstrip() == " world and"
    assert gen.result.finish_reason == "stop"
    assert "you" not in gen.result.text


def test_cancel_mid_stream_is_bounded_and_the_server_stays_usable(engine: RemoteEngine) -> None:
    cancel = threading.Event()
    gen = engine.stream(PROMPT, Sampling(temperature=0.0, max_tokens=1800), cancel=cancel)
    pieces = []
    for piece in gen:
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()
    assert gen.result.finish_reason == "cancelled"
    assert gen.result.text == "".join(pieces) == " world and you"
    # The next request gets the server at once and runs to its end.
    again = engine.stream(PROMPT, GREEDY)
    assert "".join(again) == " world and you. Hello world and you"
    assert again.result.finish_reason == "length"


def test_wrong_url_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EngineError) as err:
        RemoteEngine(url).load()
    assert str(err.value) == f"{url}: cannot connect (connection refused)"


def test_server_dying_mid_stream_keeps_the_partial_reply(scripted_model: Path, tmp_path: Path) -> None:
    srv = Server(scripted_model, tmp_path / "server.log")
    try:
        engine = RemoteEngine(srv.url, n_ctx=N_CTX)
        engine.load()
        gen = engine.stream(PROMPT, Sampling(temperature=0.0, max_tokens=1800))
        pieces = []
        for piece in gen:
            pieces.append(piece)
            if len(pieces) == 3:
                srv.proc.send_signal(signal.SIGKILL)
                srv.proc.wait(timeout=30)
        r = gen.result
        assert r.finish_reason == "error"
        assert r.text == "".join(pieces) and r.text.startswith(" world and you")
        assert len(pieces) < 1800
        assert r.error is not None and r.error.startswith(srv.url + ": ")
        assert "\n" not in r.error
        # Afterwards the server is gone: a new reply fails with a one-line error naming the URL.
        with pytest.raises(EngineError, match="connection refused"):
            list(engine.stream(PROMPT, GREEDY))
    finally:
        srv.stop()
