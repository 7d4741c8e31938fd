"""The remote engine against small real HTTP servers on loopback that speak the llama-server,
KoboldCpp and vLLM-style OpenAI wire formats (those servers cannot run here for real)."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from rpchat.engine.base import Sampling
from rpchat.engine.presets import SHIPPED_DIR, preset_from_file
from rpchat.engine.remote import RemoteEngine
from rpchat.errors import EngineError
from rpchat.prompt.segments import Segment


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Json:
    obj: Any
    status: int = 200


@dataclass
class Stream:
    events: Iterator[bytes]
    chunked: bool = True  # llama-server and uvicorn use chunked encoding; KoboldCpp closes the socket
    die: bool = False  # drop the connection without ending the body


SHIPPED_PRESETS = sorted(SHIPPED_DIR.glob("*.yaml"))


Route = Callable[[Request], "Json | Stream"]


@dataclass
class Fake:
    routes: dict[tuple[str, str], Route] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    client_gone: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def bodies(self, path: str) -> list[Any]:
        return [r.body for r in self.requests if r.path == path]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        fake: Fake = self.server.fake  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        req = Request(
            method, self.path, {k.lower(): v for k, v in self.headers.items()}, json.loads(raw or b"null")
        )
        fake.requests.append(req)
        route = fake.routes.get((method, self.path))
        reply = route(req) if route else Json({"error": {"code": 404, "message": "File Not Found"}}, 404)
        if isinstance(reply, Json):
            data = json.dumps(reply.obj).encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        if reply.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
        self.close_connection = not reply.chunked or reply.die
        self.end_headers()
        try:
            for data in reply.events:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if reply.chunked else data)
                self.wfile.flush()
            if reply.chunked and not reply.die:
                self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            fake.client_gone.set()


@pytest.fixture
def fake() -> Iterator[Fake]:
    state = Fake()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.fake = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def sse(obj: Any, event: str | None = None) -> bytes:
    return ((f"event: {event}\n" if event else "") + f"data: {json.dumps(obj)}\n\n").encode()


def pings(fake: Fake, seconds: float = 10.0) -> Iterator[bytes]:
    """SSE comments until the client goes away (bounded), like a server still evaluating the prompt."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and not fake.client_gone.is_set():
        yield b": ping\n\n"
        time.sleep(0.02)


# -- llama-server ------------------------------------------------------------------------------

LLAMA_SAMPLERS = ["penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"]


def toy_tokenize(text: str, special: bool, bos: bool) -> list[int]:
    """Characters are ids 100+ord; with ``special`` the texts ``<s>``/``</s>`` are ids 1/2."""
    ids = [1] if bos else []
    i = 0
    while i < len(text):
        if special and text.startswith("</s>", i):
            ids.append(2)
            i += 4
        elif special and text.startswith("<s>", i):
            ids.append(1)
            i += 3
        else:
            ids.append(100 + ord(text[i]))
            i += 1
    return ids


def plain_ids(text: str) -> list[int]:
    return toy_tokenize(text, special=False, bos=False)


def llama_final(**extra: Any) -> bytes:
    final = {
        "content": "",
        "stop": True,
        "stop_type": "eos",
        "tokens_evaluated": 12,
        "timings": {"prompt_n": 4, "cache_n": 8, "predicted_n": 3},
    }
    final.update(extra)
    return sse(final)


# The hard limits of llama-server's request schema (tools/server/server-schema.cpp): a value outside
# them is an HTTP 400, not clamped.
INT32_MAX = 2**31 - 1
LLAMA_HARD_LIMITS = {
    "n_predict": (-1, INT32_MAX),
    "n_keep": (-1, INT32_MAX),
    "repeat_last_n": (0, INT32_MAX),
    "dry_allowed_length": (0, INT32_MAX),
    "dry_penalty_last_n": (0, INT32_MAX),
    "min_keep": (0, INT32_MAX),
}


def llama_schema_error(body: dict[str, Any]) -> str | None:
    """What the real llama-server answers (HTTP 400) to a body its schema refuses, else None."""
    for name, (low, high) in LLAMA_HARD_LIMITS.items():
        value = body.get(name)
        if value is not None and not low <= value <= high:
            return f"Field '{name}': Value must be between {low} <= value <= {high}, but got {value}"
    if body.get("dry_sequence_breakers") == []:
        return (
            "Field 'dry_sequence_breakers': Error: dry_sequence_breakers must be a non-empty array of strings"
        )
    return None


def llama_routes(fake: Fake, *, params: dict[str, Any] | None = None) -> None:
    props_params = {"n_predict": -1, "samplers": LLAMA_SAMPLERS} if params is None else params
    props = {
        "default_generation_settings": {"n_ctx": 1024, "params": props_params},
        "model_path": "/models/fake-7b.Q4_K_M.gguf",
        "total_slots": 1,
    }

    def tokenize(req: Request) -> Json:
        b = req.body
        return Json(
            {"tokens": toy_tokenize(b["content"], b.get("parse_special", True), b.get("add_special", False))}
        )

    def completion(req: Request) -> Json | Stream:
        refused = llama_schema_error(req.body)
        if refused:
            return Json({"error": {"code": 400, "message": refused, "type": "invalid_request_error"}}, 400)
        return Stream(iter([sse({"content": "Hel", "stop": False}), sse({"content": "lo"}), sse({"content": " there"}),
                            llama_final()]))  # fmt: skip

    fake.routes[("GET", "/props")] = lambda req: Json(props)
    fake.routes[("GET", "/v1/models")] = lambda req: Json({"object": "list", "data": [{"id": "fake"}]})
    fake.routes[("POST", "/tokenize")] = tokenize
    fake.routes[("POST", "/completion")] = completion


def connect(fake: Fake, **kwargs: Any) -> RemoteEngine:
    engine = RemoteEngine(fake.url, **kwargs)
    engine.load()
    return engine


def test_auto_detects_llama_server_and_reads_context_and_model(fake: Fake) -> None:
    llama_routes(fake)
    engine = connect(fake)
    assert engine.api == "llama.cpp"
    assert engine.n_ctx == 1024
    assert engine.info.model_name == "fake-7b.Q4_K_M.gguf"
    assert "llama.cpp" in engine.info.backend
    assert engine.exact_token_count
    engine.close()


def test_llama_server_gets_every_sampler_and_streams_with_stats(fake: Fake) -> None:
    llama_routes(fake)
    engine = connect(fake)
    sampling = Sampling(
        temperature=0.7, top_k=0, top_p=1.0, min_p=0.05, typical_p=0.95, tfs_z=0.9, repeat_penalty=1.11,
        repeat_last_n=2048, presence_penalty=0.1, frequency_penalty=0.2, dry_multiplier=0.8, dry_base=1.75,
        dry_allowed_length=2, dry_penalty_last_n=-1, xtc_probability=0.5, xtc_threshold=0.1, mirostat=0,
        seed=7, max_tokens=42, temperature_last=False,
    )  # fmt: skip
    gen = engine.stream([Segment("### Input:\nHi", "template")], sampling, stop=["\n###", "User:"])
    pieces = list(gen)
    body = fake.bodies("/completion")[0]
    assert body["prompt"] == "### Input:\nHi"
    assert body["stream"] is True and body["cache_prompt"] is True
    assert body["n_predict"] == 42 and body["seed"] == 7
    assert body["stop"] == ["\n###", "User:"]
    assert body["temperature"] == 0.7 and body["top_k"] == 0 and body["min_p"] == 0.05
    assert body["typical_p"] == 0.95 and body["repeat_penalty"] == 1.11 and body["repeat_last_n"] == 2048
    assert body["frequency_penalty"] == 0.2 and body["presence_penalty"] == 0.1
    assert body["dry_multiplier"] == 0.8 and body["dry_penalty_last_n"] == 1024  # -1: the whole context
    assert body["dry_sequence_breakers"] == ["\n", ":", '"', "*"]
    assert body["xtc_probability"] == 0.5 and body["xtc_threshold"] == 0.1
    # temperature moves to the front, after the penalties, in the server's own order
    assert body["samplers"] == ["penalties", "dry", "temperature", "top_n_sigma", "top_k", "typ_p", "top_p",
                                "min_p", "xtc"]  # fmt: skip
    assert "tfs_z" not in body  # current llama-server has no TFS
    assert gen.result.unsupported == ["tfs_z"] == engine.unsupported(sampling)
    assert pieces == ["Hel", "lo", " there"]
    r = gen.result
    assert r.text == "Hello there" and r.finish_reason == "eos" and r.error is None
    assert (r.prompt_tokens, r.prompt_tokens_evaluated, r.prompt_tokens_reused, r.tokens_generated) == (
        12,
        4,
        8,
        3,
    )
    assert r.ttft_s > 0


@pytest.mark.parametrize("preset", SHIPPED_PRESETS, ids=lambda p: p.stem)
def test_every_shipped_preset_passes_llama_server_limits(fake: Fake, preset: Path) -> None:
    llama_routes(fake)
    gen = connect(fake).stream([Segment("x", "template")], preset_from_file(preset).sampling)
    assert list(gen) == ["Hel", "lo", " there"]
    body = fake.bodies("/completion")[0]
    assert body["repeat_last_n"] >= 0 and body["dry_penalty_last_n"] >= 0


@pytest.mark.parametrize(
    ("routes", "path", "fields"),
    [
        ("llama", "/completion", ("repeat_last_n", "dry_penalty_last_n")),
        ("kobold", "/api/extra/generate/stream", ("rep_pen_range", "dry_penalty_last_n")),
    ],
)
def test_whole_context_windows_are_spelled_as_the_context_size(
    fake: Fake, routes: str, path: str, fields: tuple[str, ...]
) -> None:
    (llama_routes if routes == "llama" else kobold_routes)(fake)
    engine = connect(fake)
    sampling = Sampling(repeat_penalty=1.1, repeat_last_n=-1, dry_multiplier=0.8, dry_penalty_last_n=-1)
    list(engine.stream([Segment("x", "template")], sampling))
    body = fake.bodies(path)[0]
    assert [body[f] for f in fields] == [engine.n_ctx, engine.n_ctx]
    assert engine.unsupported(sampling) == []


def test_empty_dry_sequence_breakers_are_left_to_the_server(fake: Fake) -> None:
    llama_routes(fake)
    gen = connect(fake).stream(
        [Segment("x", "template")], Sampling(dry_multiplier=0.8, dry_sequence_breakers=())
    )
    assert list(gen) == ["Hel", "lo", " there"]
    assert "dry_sequence_breakers" not in fake.bodies("/completion")[0]


def test_random_seed_and_default_order_when_unset(fake: Fake) -> None:
    llama_routes(fake)
    gen = connect(fake).stream([Segment("x", "template")], Sampling())
    list(gen)
    body = fake.bodies("/completion")[0]
    assert body["seed"] == -1 and "samplers" not in body
    assert gen.result.unsupported == []


def test_older_llama_server_with_tfs_gets_tfs(fake: Fake) -> None:
    llama_routes(fake, params={"tfs_z": 1.0, "samplers": LLAMA_SAMPLERS})
    gen = connect(fake).stream([Segment("x", "template")], Sampling(tfs_z=0.85))
    list(gen)
    assert fake.bodies("/completion")[0]["tfs_z"] == 0.85
    assert gen.result.unsupported == []


@pytest.mark.parametrize(
    ("stop_types", "finish"),
    [({"stop_type": "limit"}, "length"), ({"stop_type": "word"}, "stop"), ({"stopped_eos": True}, "eos")],
)
def test_llama_server_finish_reasons(fake: Fake, stop_types: dict[str, Any], finish: str) -> None:
    llama_routes(fake)
    final = {"content": "", "stop": True, **stop_types}
    fake.routes[("POST", "/completion")] = lambda req: Stream(iter([sse({"content": "a"}), sse(final)]))
    gen = connect(fake).stream([Segment("x", "template")], Sampling())
    assert list(gen) == ["a"]
    assert gen.result.finish_reason == finish


def test_plain_user_text_goes_as_one_string(fake: Fake) -> None:
    llama_routes(fake)
    prompt = [Segment("### Input:\n", "template"), Segment("Theo: where am I?", "user")]
    list(connect(fake).stream(prompt, Sampling()))
    assert fake.bodies("/completion")[0]["prompt"] == "### Input:\nTheo: where am I?"


def test_typed_control_token_in_user_text_stays_text(fake: Fake) -> None:
    llama_routes(fake)
    prompt = [
        Segment("### Input:\n", "template"),
        Segment("I typed </s> here", "user"),
        Segment("\n", "template"),
    ]
    list(connect(fake).stream(prompt, Sampling()))
    sent = fake.bodies("/completion")[0]["prompt"]
    # The template has no control tokens: the whole prompt goes as plain-text ids, BOS first.
    assert sent == [1, *plain_ids("### Input:\nI typed </s> here\n")]
    assert 2 not in sent


def test_control_tokens_in_template_and_user_text_go_mixed(fake: Fake) -> None:
    llama_routes(fake)
    prompt = [Segment("<s>[INST] ", "template"), Segment("a</s>b", "user"), Segment(" [/INST]", "template")]
    list(connect(fake).stream(prompt, Sampling()))
    assert fake.bodies("/completion")[0]["prompt"] == ["<s>[INST] ", *plain_ids("a</s>b"), " [/INST]"]


def test_mixed_prompt_led_by_user_text_starts_with_empty_string_for_bos(fake: Fake) -> None:
    llama_routes(fake)
    prompt = [Segment("x</s>", "user"), Segment("<s>", "template")]
    list(connect(fake).stream(prompt, Sampling()))
    assert fake.bodies("/completion")[0]["prompt"] == ["", *plain_ids("x</s>"), "<s>"]


def test_count_tokens_asks_the_server_without_special_parsing(fake: Fake) -> None:
    llama_routes(fake)
    engine = connect(fake)
    before = len(fake.bodies("/tokenize"))
    assert engine.count_tokens("a</s>") == 5
    assert engine.count_tokens("a</s>") == 5  # cached: no second request
    sent = fake.bodies("/tokenize")[before:]
    assert sent == [{"content": "a</s>", "add_special": False, "parse_special": False}]


def test_stop_string_is_enforced_even_when_the_server_ignores_it(fake: Fake) -> None:
    llama_routes(fake)
    chunks = [sse({"content": t}) for t in ("Hello", " wor", "ld! More")] + [llama_final()]
    fake.routes[("POST", "/completion")] = lambda req: Stream(iter(chunks))
    gen = connect(fake).stream([Segment("x", "template")], Sampling(), stop=["world"])
    pieces = list(gen)
    assert "".join(pieces) == "Hello " == gen.result.text
    assert gen.result.finish_reason == "stop"


def test_stream_ending_without_final_event_is_an_error_with_partial_text(fake: Fake) -> None:
    llama_routes(fake)
    fake.routes[("POST", "/completion")] = lambda req: Stream(
        iter([sse({"content": "Hel"}), sse({"content": "lo"})])
    )
    gen = connect(fake).stream([Segment("x", "template")], Sampling())
    assert list(gen) == ["Hel", "lo"]
    assert gen.result.finish_reason == "error"
    assert gen.result.text == "Hello"
    assert gen.result.error is not None and gen.result.error.startswith(fake.url)


def test_server_dying_mid_stream_keeps_partial_reply(fake: Fake) -> None:
    llama_routes(fake)
    fake.routes[("POST", "/completion")] = lambda req: Stream(iter([sse({"content": "Hel"}), sse({"content": "lo"})]),
                                                               die=True)  # fmt: skip
    gen = connect(fake).stream([Segment("x", "template")], Sampling())
    assert list(gen) == ["Hel", "lo"]
    r = gen.result
    assert r.finish_reason == "error" and r.text == "Hello"
    assert r.error == f"{fake.url}: the server closed the connection mid-reply"


def test_error_event_mid_stream(fake: Fake) -> None:
    llama_routes(fake)
    events = [sse({"content": "a"}), sse({"error": {"code": 500, "message": "slot crashed"}})]
    fake.routes[("POST", "/completion")] = lambda req: Stream(iter(events))
    gen = connect(fake).stream([Segment("x", "template")], Sampling())
    assert list(gen) == ["a"]
    assert gen.result.finish_reason == "error"
    assert "slot crashed" in (gen.result.error or "")


def test_http_error_raises_one_line_engine_error(fake: Fake) -> None:
    llama_routes(fake)
    fake.routes[("POST", "/completion")] = lambda req: Json(
        {"error": {"code": 500, "message": "boom\nat line 2"}}, 500
    )
    gen = connect(fake).stream([Segment("x", "template")], Sampling())
    with pytest.raises(EngineError) as err:
        list(gen)
    assert str(err.value) == f"{fake.url}: HTTP 500 on /completion: boom at line 2"


def test_cancel_while_server_is_still_evaluating_the_prompt(fake: Fake) -> None:
    llama_routes(fake)
    fake.routes[("POST", "/completion")] = lambda req: Stream(pings(fake))
    cancel = threading.Event()
    gen = connect(fake).stream([Segment("x", "template")], Sampling(), cancel=cancel)
    timer = threading.Timer(0.1, cancel.set)
    timer.start()
    assert list(gen) == []
    assert gen.result.finish_reason == "cancelled"
    assert fake.client_gone.wait(5), "the server never saw the stream close"


def test_abandoning_the_iteration_closes_the_stream(fake: Fake) -> None:
    llama_routes(fake)
    fake.routes[("POST", "/completion")] = lambda req: Stream(
        itertools.chain([sse({"content": "a"})], pings(fake))
    )
    gen = connect(fake).stream([Segment("x", "template")], Sampling())
    for _piece in gen:
        break
    assert fake.client_gone.wait(5)
    assert gen.result.finish_reason == "cancelled" and gen.result.text == "a"


def test_api_key_goes_as_bearer_header(fake: Fake) -> None:
    llama_routes(fake)
    engine = connect(fake, api_key="sekrit")
    list(engine.stream([Segment("x", "template")], Sampling()))
    engine.count_tokens("hello")
    assert fake.requests
    assert all(r.headers.get("authorization") == "Bearer sekrit" for r in fake.requests)


def test_refused_api_key_is_reported(fake: Fake) -> None:
    fake.routes[("GET", "/api/extra/version")] = lambda req: Json({"error": "Unauthorized"}, 401)
    with pytest.raises(EngineError, match="refused the API key"):
        connect(fake, api_key="wrong")


def test_server_with_no_known_api(fake: Fake) -> None:
    with pytest.raises(EngineError) as err:
        connect(fake)
    assert str(err.value).startswith(fake.url + ": no llama.cpp server, KoboldCpp or OpenAI-compatible API")


def test_named_api_that_does_not_match_the_server(fake: Fake) -> None:
    llama_routes(fake)
    with pytest.raises(EngineError, match="KoboldCpp"):
        connect(fake, api="koboldcpp")


def test_unknown_api_name_and_unloaded_engine() -> None:
    with pytest.raises(EngineError, match="unknown remote API"):
        RemoteEngine("http://127.0.0.1:9", api="ollama")
    engine = RemoteEngine("127.0.0.1:9/v1/")
    assert engine.url == "http://127.0.0.1:9"
    with pytest.raises(EngineError, match="not connected"):
        engine.count_tokens("x")


def test_url_with_v1_suffix_works(fake: Fake) -> None:
    llama_routes(fake)
    engine = RemoteEngine(fake.url.removeprefix("http://") + "/v1/")
    engine.load()
    assert engine.api == "llama.cpp"


# -- KoboldCpp ---------------------------------------------------------------------------------


def kobold_routes(fake: Fake, *, stop_reason: int = 1) -> dict[str, Any]:
    state: dict[str, Any] = {"aborted": [], "slow": False}

    def stream(req: Request) -> Stream:
        def events() -> Iterator[bytes]:
            if state["slow"]:
                end = time.monotonic() + 10
                while not state["aborted"] and time.monotonic() < end:
                    yield sse({"token": "la ", "finish_reason": None}, "message")
                    time.sleep(0.02)
            else:
                for t in ("Once", " upon", " a time"):
                    yield sse({"token": t, "finish_reason": None}, "message")
            yield sse({"token": "", "finish_reason": "stop"}, "message")

        return Stream(events(), chunked=False)

    def abort(req: Request) -> Json:
        state["aborted"].append(req.body.get("genkey"))
        return Json({"success": "true", "done": "true"})

    fake.routes[("GET", "/api/extra/version")] = lambda req: Json({"result": "KoboldCpp", "version": "1.80"})
    fake.routes[("GET", "/api/extra/true_max_context_length")] = lambda req: Json({"value": 8192})
    fake.routes[("GET", "/api/v1/config/max_context_length")] = lambda req: Json({"value": 4096})
    fake.routes[("GET", "/api/v1/model")] = lambda req: Json({"result": "koboldcpp/fake-13b"})
    fake.routes[("GET", "/v1/models")] = lambda req: Json(
        {"object": "list", "data": [{"id": "koboldcpp/fake-13b"}]}
    )
    fake.routes[("POST", "/api/extra/tokencount")] = lambda req: Json(
        {"value": len(req.body["prompt"].split())}
    )
    fake.routes[("POST", "/api/extra/generate/stream")] = stream
    fake.routes[("POST", "/api/extra/abort")] = abort
    fake.routes[("GET", "/api/extra/perf")] = lambda req: Json(
        {"stop_reason": stop_reason, "last_token_count": 3, "last_input_count": 20}
    )
    return state


def test_auto_detects_koboldcpp_before_its_openai_endpoints(fake: Fake) -> None:
    kobold_routes(fake)
    engine = connect(fake)
    assert engine.api == "koboldcpp"
    assert engine.n_ctx == 8192
    assert engine.info.model_name == "fake-13b"
    assert engine.count_tokens("one two three") == 3 and engine.exact_token_count


def test_kobold_request_maps_samplers_and_reads_finish_from_perf(fake: Fake) -> None:
    kobold_routes(fake)
    engine = connect(fake)
    sampling = Sampling(
        temperature=1.25, top_k=0, top_p=1.0, min_p=0.05, typical_p=0.9, tfs_z=0.9, repeat_penalty=1.05,
        repeat_last_n=-1, frequency_penalty=0.3, dry_multiplier=0.8, dry_penalty_last_n=512,
        xtc_probability=0.5, xtc_threshold=0.15, mirostat=2, mirostat_tau=4.0, max_tokens=77,
    )  # fmt: skip
    gen = engine.stream([Segment("Hi", "template"), Segment(" there", "user")], sampling, stop=["\nYou:"])
    assert list(gen) == ["Once", " upon", " a time"]
    body = fake.bodies("/api/extra/generate/stream")[0]
    assert body["prompt"] == "Hi there"
    assert body["max_length"] == 77 and body["max_context_length"] == 8192
    assert body["temperature"] == 1.25 and body["top_k"] == 0 and body["min_p"] == 0.05
    assert body["typical"] == 0.9 and body["tfs"] == 0.9
    assert body["rep_pen"] == 1.05 and body["rep_pen_range"] == 8192  # -1 = whole context
    assert body["dry_multiplier"] == 0.8 and body["dry_penalty_last_n"] == 512
    assert body["dry_sequence_breakers"] == ["\n", ":", '"', "*"]
    assert body["xtc_probability"] == 0.5 and body["xtc_threshold"] == 0.15
    assert body["mirostat"] == 2 and body["mirostat_tau"] == 4.0
    assert body["sampler_order"] == [6, 0, 1, 3, 4, 2, 5] and body["sampler_seed"] == -1
    assert body["stop_sequence"] == ["\nYou:"] and body["trim_stop"] is True
    assert body["genkey"].startswith("KCPP")
    assert "frequency_penalty" not in body
    r = gen.result
    assert r.unsupported == ["frequency_penalty"]
    assert r.text == "Once upon a time"
    assert r.finish_reason == "eos"  # perf stop_reason 1
    assert r.tokens_generated == 3 and r.prompt_tokens == 20


def test_kobold_stop_string_finish(fake: Fake) -> None:
    kobold_routes(fake, stop_reason=2)
    gen = connect(fake).stream([Segment("x", "template")], Sampling(seed=5, temperature_last=False))
    list(gen)
    body = fake.bodies("/api/extra/generate/stream")[0]
    assert body["sampler_seed"] == 5 and body["sampler_order"] == [6, 5, 0, 1, 3, 4, 2]
    assert gen.result.finish_reason == "stop"


def test_kobold_cancel_closes_the_stream_and_aborts_this_generation(fake: Fake) -> None:
    state = kobold_routes(fake)
    state["slow"] = True
    cancel = threading.Event()
    gen = connect(fake).stream([Segment("x", "template")], Sampling(), cancel=cancel)
    pieces = []
    for piece in gen:
        pieces.append(piece)
        if len(pieces) == 2:
            cancel.set()
    assert gen.result.finish_reason == "cancelled"
    assert 2 <= len(pieces) < 100
    assert state["aborted"] == [fake.bodies("/api/extra/generate/stream")[0]["genkey"]]


def test_kobold_stream_cut_before_finish_is_an_error(fake: Fake) -> None:
    kobold_routes(fake)
    events = [sse({"token": "Once", "finish_reason": None}, "message")]
    fake.routes[("POST", "/api/extra/generate/stream")] = lambda req: Stream(iter(events), chunked=False)
    gen = connect(fake).stream([Segment("x", "template")], Sampling())
    assert list(gen) == ["Once"]
    assert gen.result.finish_reason == "error" and gen.result.text == "Once"


# -- OpenAI-compatible (vLLM-style extras) ---------------------------------------------------


def test_openai_server_reports_context_usage_and_counts(fake: Fake) -> None:
    models = {"object": "list", "data": [{"id": "org/model-8b", "max_model_len": 32768}]}
    fake.routes[("GET", "/v1/models")] = lambda req: Json(models)
    fake.routes[("POST", "/tokenize")] = lambda req: Json(
        {"count": len(req.body["prompt"]), "tokens": list(range(len(req.body["prompt"])))}
    )

    def completions(req: Request) -> Stream:
        chunk = {"choices": [{"index": 0, "text": "Hi", "finish_reason": None}]}
        end = {"choices": [{"index": 0, "text": "!", "finish_reason": "length"}]}
        usage = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2,
                                          "prompt_tokens_details": {"cached_tokens": 6}}}  # fmt: skip
        return Stream(iter([sse(chunk), sse(end), sse(usage), b"data: [DONE]\n\n"]))

    fake.routes[("POST", "/v1/completions")] = completions
    engine = connect(fake)
    assert engine.api == "openai" and engine.n_ctx == 32768
    assert engine.count_tokens("abcd") == 4
    sampling = Sampling(min_p=0.1, top_k=40, repeat_penalty=1.1, typical_p=0.9, seed=3, max_tokens=2)
    gen = engine.stream([Segment("p", "user")], sampling, stop=["\n"])
    assert list(gen) == ["Hi", "!"]
    body = fake.bodies("/v1/completions")[0]
    assert body["model"] == "org/model-8b" and body["prompt"] == "p" and body["stream"] is True
    assert body["min_p"] == 0.1 and body["top_k"] == 40 and body["repetition_penalty"] == 1.1
    assert body["seed"] == 3 and body["max_tokens"] == 2 and body["stop"] == ["\n"]
    r = gen.result
    assert r.unsupported == ["typical_p", "repeat_last_n"]
    assert r.finish_reason == "length"
    assert (r.prompt_tokens, r.prompt_tokens_reused, r.prompt_tokens_evaluated, r.tokens_generated) == (
        9,
        6,
        3,
        2,
    )


def test_openai_reports_each_sampler_it_cannot_honour_once(fake: Fake) -> None:
    fake.routes[("GET", "/v1/models")] = lambda req: Json({"object": "list", "data": [{"id": "m"}]})
    engine = connect(fake, n_ctx=4096)
    assert engine.n_ctx == 4096 and not engine.exact_token_count
    assert "estimates" in (engine.info.notice or "")
    assert engine.count_tokens("seven chars") == 4  # the estimate: 11 characters / 3.5, rounded up
    sampling = Sampling(
        tfs_z=0.9, dry_multiplier=0.8, dry_base=2.0, dry_allowed_length=3, xtc_probability=0.5,
        xtc_threshold=0.2, mirostat=2, mirostat_tau=3.0, dynatemp_range=0.5, temperature_last=False,
        min_p=0.1, top_k=20, presence_penalty=0.5, seed=1,
    )  # fmt: skip
    assert engine.unsupported(sampling) == [
        "tfs_z", "dry_multiplier", "xtc_probability", "mirostat", "dynatemp_range", "temperature_last",
    ]  # fmt: skip
    assert engine.unsupported(Sampling()) == []


def test_server_still_loading_its_model(fake: Fake) -> None:
    fake.routes[("GET", "/api/extra/version")] = lambda req: Json(
        {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}, 503
    )
    with pytest.raises(EngineError) as err:
        connect(fake)
    assert (
        str(err.value)
        == f"{fake.url}: the server is not ready yet (HTTP 503 on /api/extra/version: Loading model)"
    )
