"""The remote engine: streams replies from a llama.cpp, OpenAI-compatible or KoboldCpp server over HTTP.

For users whose model does not fit their machine. ``RemoteEngine(url).load()`` detects the API
(or takes the one the user names), reads the context size and model name, and `stream` sends one
streaming request per reply. A reader thread pulls the SSE stream so cancel works between chunks
and even while the server is still evaluating the prompt.

Prompt text: llama-server gets token ids for user text whenever that text contains control-token
text, so a typed ``</s>`` stays text. OpenAI-compatible servers and KoboldCpp only take text, which
they tokenize with special tokens parsed (llama-cpp-python does); `EngineInfo.notice` says so.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx

from rpchat.engine.alternatives import RawStep, trace_of
from rpchat.engine.base import (
    EngineInfo,
    ProgressCallback,
    PromptProgress,
    PromptProgressCallback,
    Result,
    Sampling,
)
from rpchat.engine.remote_apis import (
    API_CLASSES,
    KoboldApi,
    LlamaServerApi,
    OpenAIApi,
    estimate_tokens,
    request_body,
)
from rpchat.engine.remote_http import (
    Chunk,
    Connection,
    ServerApi,
    Transport,
    describe_failure,
    iter_lines,
    shown_url,
)
from rpchat.engine.textstream import StopFilter
from rpchat.errors import EngineError
from rpchat.prompt.segments import Segment
from rpchat.secret import SecretFilter

API_NAMES = ("auto", *API_CLASSES)
_POLL_S = 0.02  # how often a waiting stream looks at the cancel event
_COUNT_CACHE = 2048


def normalize_url(url: str) -> str:
    """``host:port``, ``http://host:port/``, ``.../v1`` and ``.../api`` all mean the server root."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    url = url.rstrip("/")
    for suffix in ("/v1", "/api"):
        url = url.removesuffix(suffix)
    return url


def _plausible(count: int | None, text: str) -> int | None:
    # A token is at least one byte (plus a few added BOS/EOS): a count outside that is the server's nonsense.
    if count is None or not 0 <= count <= len(text.encode("utf-8")) + 8:
        return None
    return count


@dataclass(frozen=True)
class _Failure:
    problem: str
    streaming: bool  # the server had started the reply (HTTP 200) when it failed


_END = object()
_EMPTY = Chunk()
_MAX_COUNT = 100_000_000  # token counts and context sizes past this are a server's nonsense
_MAX_BYTES = 256 * 1024 * 1024  # a reply's stream, whatever the token budget
_MAX_IDLE_LINES = 100_000  # lines in a row that carry nothing (a keep-alive ping every second: a day)


def _sane(stats: dict[str, int]) -> dict[str, int]:
    # Figures from the server are shown and used for speeds: a negative or absurd one is dropped.
    return {k: v for k, v in stats.items() if 0 <= v <= _MAX_COUNT}


class RemoteGeneration:
    """One streaming reply. Iterate for text pieces; `result` is complete once iteration ends.

    A request the server refuses (no connection, HTTP error) raises `EngineError` from the iteration.
    A stream that breaks after it started ends the iteration normally with the partial text in
    ``result.text``, ``result.finish_reason == "error"`` and ``result.error`` set.
    """

    def __init__(
        self,
        conn: Connection,
        api: ServerApi,
        body: dict[str, Any],
        stop: Sequence[str],
        cancel: threading.Event | None,
        unsupported: list[str],
        started: float | None = None,
        max_tokens: int = 0,
        progress: PromptProgressCallback | None = None,
    ) -> None:
        self.result = Result(unsupported=list(unsupported))
        self._progress = progress
        # A server that ignores the token budget is cut off: pieces past twice the budget, bytes past a
        # generous allowance per token (llama-server's events with timings are well under 8 KiB).
        budget = max_tokens if max_tokens > 0 else 4096
        self._max_pieces = 2 * budget + 64
        self._max_bytes = min(_MAX_BYTES, 8 * 1024 * 1024 + budget * 8 * 1024)
        self._conn = conn
        self._api = api
        self._body = body
        self._stop = list(stop)
        self._cancel = cancel
        self._queue: queue.Queue[Any] = queue.Queue()
        self._closing = threading.Event()
        self._response: httpx.Response | None = None
        self._used = False
        self._complete = False
        self._started = time.perf_counter() if started is None else started
        self._thread = threading.Thread(target=self._read, name="rpchat-remote-stream", daemon=True)
        self._thread.start()

    # -- reader thread -------------------------------------------------------------------------
    def _read(self) -> None:
        path = self._api.path
        conn = self._conn
        try:
            with conn.request("POST", path, self._body, timeout=conn.stream_timeout,
                              wait=self._closing.wait) as resp:
                if resp.status_code != 200:
                    self._queue.put(_Failure(conn.problem(resp, path), streaming=False))
                    return
                self._response = resp
                if self._closing.is_set():  # cancelled while the server was still sending headers
                    return
                event, data = "", list[str]()
                progress_at = time.monotonic()
                idle = 0  # lines since the last one that carried anything
                for line in iter_lines(resp, self._max_bytes):
                    if self._closing.is_set():
                        return
                    idle += 1
                    if not line:
                        if data and self._emit(event, "\n".join(data)):
                            progress_at, idle = time.monotonic(), 0
                        event, data = "", []
                    elif not line.startswith(":"):  # ":" lines are SSE comments (keep-alive pings)
                        name, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if name == "event":
                            event = value
                        elif name == "data":
                            data.append(value)
                    if time.monotonic() - progress_at > conn.no_progress_s:
                        raise conn.fail(f"the server sent nothing new for {conn.no_progress_s:g} s "
                                        "(engine.stream_timeout); stopped waiting")
                    if idle > _MAX_IDLE_LINES:
                        raise conn.fail(f"the server sent {_MAX_IDLE_LINES:,} lines with nothing in them; "
                                        "stopped reading")
                if data:
                    self._emit(event, "\n".join(data))
                self._queue.put(_END)
        except EngineError as exc:
            if not self._closing.is_set():
                self._queue.put(_Failure(exc.problem, streaming=self._response is not None))
        except httpx.HTTPError as exc:
            if not self._closing.is_set():
                self._queue.put(_Failure(describe_failure(exc), streaming=self._response is not None))
        except Exception as exc:  # noqa: BLE001 - a reader thread must report, never die silently
            if not self._closing.is_set():
                problem = f"unexpected {type(exc).__name__}: {exc}"
                self._queue.put(_Failure(problem, streaming=self._response is not None))

    def _emit(self, event: str, data: str) -> bool:
        """Queue the event's chunk; True when it carried anything (text, figures, an end)."""
        chunk = self._api.parse(event, data)
        if chunk is not None:
            self._queue.put(chunk)
        return chunk is not None and chunk != _EMPTY

    # -- consumer ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[str]:
        if self._used:
            return
        self._used = True
        try:
            yield from self._pump()
        except GeneratorExit:  # the caller stopped iterating: that is a cancel
            self.result.finish_reason = "cancelled"
            raise
        finally:
            self._shut()

    def _pump(self) -> Iterator[str]:
        r = self.result
        scan = StopFilter(self._stop)
        mask = SecretFilter()  # a server echoing the API key into the reply gets it masked
        stats: dict[str, int] = {}
        first_at = last_at = 0.0
        pieces = 0
        finished = stopped = False
        raw: list[RawStep] = []  # token alternatives, when the server sends them
        report = self._progress
        if report is not None:
            # Until the server says more (llama-server does, others never): reading, for so long.
            report(PromptProgress(0, 0, time.perf_counter() - self._started))
        while True:
            if self._cancel is not None and self._cancel.is_set():
                r.finish_reason = "cancelled"
                break
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if item is _END:
                self._complete = True
                if not finished:
                    self._fail("the server ended the stream before the reply was complete")
                break
            if isinstance(item, _Failure):
                if not item.streaming:
                    self._complete = True
                    raise EngineError(item.problem, self._conn.url)
                self._fail(item.problem)
                break
            chunk: Chunk = item
            if chunk.error is not None:
                self._fail(f"the server reported an error mid-reply: {chunk.error}")
                break
            if chunk.progress is not None and report is not None and not pieces:
                report(replace(chunk.progress, elapsed_s=time.perf_counter() - self._started))
            if chunk.steps and len(raw) < self._max_pieces:
                raw.extend(chunk.steps)
            if chunk.text and pieces >= self._max_pieces:
                self._fail(f"the server kept sending past the token budget ({pieces:,} pieces); stopped reading")
                break
            if chunk.text:
                now = time.perf_counter()
                if not pieces:
                    first_at = now
                    r.ttft_s = now - self._started
                last_at = now
                pieces += 1
                out, stopped = scan.feed(mask.feed(chunk.text))
                if out:
                    r.text += out
                    yield out
                if stopped:
                    r.finish_reason = "stop"
                    break
            stats.update(_sane(chunk.stats))
            if chunk.finish is not None:
                r.finish_reason = chunk.finish
                finished = True
            if chunk.done:
                self._complete = finished = True
                break
        if not stopped:
            out, stopped = scan.feed(mask.flush())
            if out:
                r.text += out
                yield out
        if not stopped:
            rest = scan.flush()
            if rest:
                r.text += rest
                yield rest
        if finished and r.finish_reason != "error":
            self._complete = True
            late = self._api.after()
            if late is not None:
                stats.update(_sane(late.stats))
                if late.finish is not None and r.finish_reason == "stop":
                    r.finish_reason = late.finish
        if raw:
            r.trace = trace_of(raw).fit(r.text)
        r.gen_time_s = last_at - first_at if pieces else 0.0
        r.tokens_generated = stats.get("generated", pieces)
        r.prompt_tokens = stats.get("prompt", 0)
        r.prompt_tokens_reused = stats.get("reused", 0)
        r.prompt_tokens_evaluated = stats.get("evaluated", max(0, r.prompt_tokens - r.prompt_tokens_reused))

    def _fail(self, problem: str) -> None:
        self.result.finish_reason = "error"
        self.result.error = str(EngineError(problem, self._conn.url))

    def _shut(self) -> None:
        """Stop reading; if the reply is unfinished, close the socket (the server sees it) and abort."""
        self._closing.set()
        if self._complete:
            return
        resp = self._response
        if resp is not None:
            # Shutting the socket down wakes a reader blocked in recv() at once; closing alone would not.
            try:
                stream = resp.extensions.get("network_stream")
                sock = stream.get_extra_info("socket") if stream is not None else None
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
            except (OSError, AttributeError):
                pass
        self._api.abort(self._body)

    def close(self) -> None:
        """Abandon the reply without iterating it (closes the stream)."""
        self._used = True
        self._shut()


class RemoteEngine:
    """An `Engine` backed by a llama.cpp server, an OpenAI-compatible server or KoboldCpp."""

    def __init__(
        self,
        url: str,
        api: str = "auto",
        api_key: str | None = None,
        timeout: float = 30.0,
        *,
        stream_timeout: float = 600.0,
        n_ctx: int | None = None,
        tls_verify: bool = True,
        ca_bundle: str | None = None,
        allow_insecure_key: bool = False,
    ) -> None:
        """``api``: auto, llama.cpp, openai or koboldcpp. ``n_ctx`` is used when the server does not say.

        The key goes only to this server: never over plain http:// to another machine unless
        ``allow_insecure_key``, never along a redirect; TLS is verified unless ``tls_verify`` is False.
        """
        self._target = normalize_url(url)
        self.url = shown_url(self._target)  # what errors and the status line show
        if api not in API_NAMES:
            raise EngineError(
                f"unknown remote API {api!r} (expected one of: {', '.join(API_NAMES)})", self.url
            )
        self._requested = api
        self._api_key = api_key or None
        self._timeout = timeout
        self._stream_timeout = stream_timeout
        self._transport = Transport(tls_verify=tls_verify, ca_bundle=ca_bundle,
                                    allow_insecure_key=allow_insecure_key)
        self._fallback_ctx = n_ctx
        self._conn: Connection | None = None
        self._api: ServerApi | None = None
        self._n_ctx = n_ctx or 0
        self._notices: list[str] = []
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._counts_lock = threading.Lock()  # the UI thread counts while a worker streams
        self._exact_counts = False
        from rpchat.engine.remote_slots import SlotStates

        self.kv_states = SlotStates()  # a llama-server's slot save/restore, when it allows it

    # -- Engine protocol -----------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def info(self) -> EngineInfo:
        api = self._api
        notices = self._notices + (api.notices if api else [])
        name = api.model_name if api else ""
        if name.lower().endswith(".gguf"):  # llama-cpp-python names models by their file path
            name = name.replace("\\", "/").rsplit("/", 1)[-1]
        return EngineInfo(
            model_name=name or self.url,
            backend=api.label if api else "remote (not connected)",
            n_ctx=self._n_ctx,
            notice="; ".join(dict.fromkeys(notices)) or None,
        )

    @property
    def api(self) -> str:
        """The API in use: llama.cpp, openai or koboldcpp ("auto" until `load`)."""
        return self._api.name if self._api else self._requested

    @property
    def exact_token_count(self) -> bool:
        """True when `count_tokens` asks the server's tokenizer, False when it estimates."""
        return self._exact_counts

    def load(self, progress: ProgressCallback | None = None) -> None:
        """Connect, detect the API when it is "auto", and read the context size and model name."""
        self.close()
        if progress:
            progress(0.0)
        conn = Connection(self._target, self._api_key, self._timeout, self._stream_timeout, self._transport)
        try:
            cls = self._detect(conn) if self._requested == "auto" else API_CLASSES[self._requested]
            if progress:
                progress(0.5)
            api = cls(conn)
            api.probe()
            self._notices = list(conn.notices)
            reported = api.n_ctx
            if reported is not None and 0 < reported <= _MAX_COUNT:
                self._n_ctx = reported
            else:
                self._n_ctx = self._fallback_ctx or 4096
                said = "does not report its context size" if not reported else f"reports a context of {reported:,}"
                self._notices.append(f"the server {said}; assuming {self._n_ctx}")
            sample = api.count("Hello world")
            self._exact_counts = _plausible(sample, "Hello world") is not None
            if not self._exact_counts:
                why = "has no tokenizer endpoint" if sample is None else f"counts {sample:,} tokens in 'Hello world'"
                self._notices.append(f"the server {why}: token counts are estimates")
        except BaseException:
            conn.close()
            raise
        self._conn, self._api = conn, api
        self._counts.clear()
        self.kv_states.reset()
        if progress:
            progress(1.0)

    @staticmethod
    def _detect(conn: Connection) -> type[ServerApi]:
        # KoboldCpp first: it also serves /v1/models, and newer builds emulate parts of llama-server.
        version = conn.probe("/api/extra/version")
        if isinstance(version, dict) and "version" in version:
            return KoboldApi
        props = conn.probe("/props")
        if isinstance(props, dict) and "default_generation_settings" in props:
            return LlamaServerApi
        models = conn.probe("/v1/models")
        if isinstance(models, dict) and isinstance(models.get("data"), list):
            return OpenAIApi
        raise conn.fail(
            "no llama.cpp server, KoboldCpp or OpenAI-compatible API found here "
            "(tried /api/extra/version, /props and /v1/models)"
        )

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` by the server's tokenizer (cached), or an estimate when it has none."""
        api = self._require()
        with self._counts_lock:
            cached = self._counts.get(text)
            if cached is not None:
                self._counts.move_to_end(text)
                return cached
        n = _plausible(api.count(text), text) if self._exact_counts else None
        if n is None:
            n = estimate_tokens(text)
        with self._counts_lock:
            self._counts[text] = n
            if len(self._counts) > _COUNT_CACHE:
                self._counts.popitem(last=False)
        return n

    def unsupported(self, sampling: Sampling) -> list[str]:
        """The settings in ``sampling`` this server's API cannot honour (also in `Result.unsupported`)."""
        return self._require().unsupported(sampling)

    def stream(
        self,
        prompt: Sequence[Segment],
        sampling: Sampling,
        stop: Sequence[str] = (),
        cancel: threading.Event | None = None,
        progress: PromptProgressCallback | None = None,
    ) -> RemoteGeneration:
        """Send the request and return the reply stream (see `RemoteGeneration` for errors)."""
        api = self._require()
        assert self._conn is not None
        started = time.perf_counter()  # time to first token includes building the prompt (/tokenize)
        body = request_body(api, prompt, sampling, stop, self._n_ctx)
        self.kv_states.before_request(self, body)
        return RemoteGeneration(self._conn, api, body, stop, cancel, api.unsupported(sampling), started,
                                max_tokens=sampling.max_tokens, progress=progress)

    def slot_connection(self) -> tuple[Connection | None, str]:
        """The connection and the tag naming what a saved slot is valid for (see `remote_slots`)."""
        from rpchat.engine.remote_slots import model_tag

        return self._conn, model_tag(self._api.model_name if self._api else "", self._n_ctx)

    def close(self) -> None:
        """Close the connection pool; `load` reconnects."""
        if self._conn is not None:
            self._conn.close()
        self._conn = self._api = None

    def _require(self) -> ServerApi:
        if self._api is None:
            raise EngineError("not connected (call load first)", self.url)
        return self._api
