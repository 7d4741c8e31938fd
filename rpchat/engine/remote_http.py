"""HTTP plumbing shared by the remote server protocols.

`Connection` wraps one httpx client and turns every transport or HTTP failure into a one-line
`EngineError` naming the URL. The server is not trusted: the key goes only where it was meant to (no
redirects, no plain http:// to another host unless the user says so, TLS verified), and every answer is
read within limits (line length, body size, bounded decompression, JSON depth). `ServerApi` is what each protocol (see `remote_apis`) implements: it turns
a prompt and `Sampling` into one streaming request body, parses SSE events into `Chunk`s, and says
which sampler settings it cannot honour.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import ipaddress
import json
import os
import re
import ssl
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from rpchat.engine.base import NEUTRAL_SAMPLING, FinishReason, PromptProgress, Sampling
from rpchat.errors import EngineError
from rpchat.prompt.segments import Segment
from rpchat.secret import redact, remember_secret

# A sampler knob that only matters while its primary knob is active is not reported on its own.
_DEPENDS_ON = {
    "repeat_last_n": "repeat_penalty",
    "dry_base": "dry_multiplier",
    "dry_allowed_length": "dry_multiplier",
    "dry_penalty_last_n": "dry_multiplier",
    "dry_sequence_breakers": "dry_multiplier",
    "xtc_threshold": "xtc_probability",
    "mirostat_tau": "mirostat",
    "mirostat_eta": "mirostat",
    "dynatemp_exponent": "dynatemp_range",
}
_ALWAYS = {"max_tokens", "seed", "temperature"}


def unsupported_settings(sampling: Sampling, supported: frozenset[str]) -> list[str]:
    """Names of the `Sampling` fields in use that an API without ``supported`` cannot honour.

    A sampler is in use when it differs from its neutral default. A dependent knob (the repetition
    penalty's range, DRY's base...) counts whenever its primary knob is in use and honoured.
    """
    missing: list[str] = []
    for f in dataclasses.fields(Sampling):
        name = f.name
        if name in _ALWAYS or name in supported:
            continue
        primary = _DEPENDS_ON.get(name)
        if primary is None:
            if getattr(sampling, name) != getattr(NEUTRAL_SAMPLING, name):
                missing.append(name)
        elif primary in supported and getattr(sampling, primary) != getattr(NEUTRAL_SAMPLING, primary):
            missing.append(name)
    return missing


@dataclass
class Chunk:
    """One parsed stream event."""

    text: str = ""
    done: bool = False  # the server says the reply is complete
    finish: FinishReason | None = None
    stats: dict[str, int] = field(default_factory=dict)  # prompt, evaluated, reused, generated
    error: str | None = None
    progress: PromptProgress | None = None  # the server's report on reading the prompt


# Limits that keep a broken or hostile server harmless: memory stays bounded whatever it sends.
MAX_LINE = 4 * 1024 * 1024  # one SSE line (llama-server's final event with timings is a few KB)
MAX_ANSWER = 8 * 1024 * 1024  # one JSON answer (/props, /tokenize...)
RETRY_MAX_S = 5.0  # a 429/503 asking to wait at most this long is retried once
_BLANKS = re.compile(rb"[\r\n]*")
_STEP = 64 * 1024  # decompressed bytes per step: a gzip bomb never inflates more than this at once


def shown_url(url: str) -> str:
    """``url`` as errors and screens show it: without a password (``http://user:pass@host``), which is
    remembered as a secret."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        return redact(url)
    remember_secret(parsed.password)
    return str(parsed.copy_with(username=None, password=None)) if parsed.userinfo else url


def is_loopback(host: str) -> bool:
    """True for this machine's own addresses (127.0.0.0/8, ::1, localhost)."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Inflater:
    """Bounded decoding of a ``Content-Encoding``: output comes in steps of at most `_STEP` bytes."""

    def __init__(self, encoding: str) -> None:
        coding = encoding.strip().lower()
        if coding in ("", "identity"):
            self._z = None
        elif coding in ("gzip", "x-gzip", "deflate"):
            self._z = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
        else:
            raise ValueError(f"the server sent its answer compressed as {coding[:40]!r}, which rpchat cannot read")

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._z is None:
            yield data
            return
        try:
            out = self._z.decompress(data, _STEP)
            while True:
                if out:
                    yield out
                tail = self._z.unconsumed_tail
                if not tail:
                    return
                out = self._z.decompress(tail, _STEP)
        except zlib.error:
            raise ValueError("the server's compressed answer is corrupt") from None


def iter_body(response: httpx.Response) -> Iterator[bytes]:
    """The body's bytes, decompressed in bounded steps (never the whole body, never a whole bomb)."""
    try:
        inflater = _Inflater(response.headers.get("content-encoding", ""))
    except ValueError as e:
        raise EngineError(str(e)) from None
    for raw in response.iter_raw():
        try:
            yield from inflater.feed(raw)
        except ValueError as e:
            raise EngineError(str(e)) from None


def read_body(response: httpx.Response, limit: int = MAX_ANSWER) -> bytes:
    """The whole (decompressed) body, refused past ``limit`` bytes."""
    out = bytearray()
    for piece in iter_body(response):
        out += piece
        if len(out) > limit:
            raise EngineError(f"the answer to {response.request.url.path} is larger than {limit // 2**20} MiB")
    return bytes(out)


def iter_lines(response: httpx.Response, max_bytes: int, max_line: int = MAX_LINE) -> Iterator[str]:
    """The body's lines as text (invalid UTF-8 replaced), with a cap on one line and on the whole body.

    A run of blank lines comes as one: in SSE a second blank line means nothing, and a flood of them
    must not cost a Python step each.
    """
    line = bytearray()
    total = 0
    for piece in iter_body(response):
        total += len(piece)
        if total > max_bytes:
            raise EngineError(f"the server sent more than {max_bytes // 2**20} MiB for one reply; stopped reading")
        start = 0
        while (end := piece.find(b"\n", start)) >= 0:
            line += piece[start:end]
            if len(line) > max_line:
                break
            yield line.removesuffix(b"\r").decode("utf-8", "replace")
            blanks = _BLANKS.match(piece, end + 1)  # [\r\n]* always matches
            start = blanks.end() if blanks else end + 1
            if line and start > end + 1:
                yield ""
            line.clear()
        else:
            line += piece[start:]
        if len(line) > max_line:
            raise EngineError(f"the server sent a line longer than {max_line // 2**20} MiB; stopped reading")
    if line:
        yield line.removesuffix(b"\r").decode("utf-8", "replace")


def _error_message(body: bytes) -> str:
    """The server's own error text, from whichever JSON shape it uses, on one short line."""
    parsed: Any = loads(body.decode("utf-8", "replace")) if body else None
    text = ""
    if isinstance(parsed, dict):
        err = parsed.get("error", parsed.get("detail", parsed.get("msg")))
        if isinstance(err, dict):
            err = err.get("message", err.get("msg", err.get("error")))
        elif isinstance(err, list) and err and isinstance(err[0], dict):
            err = err[0].get("msg")
        text = str(err) if err is not None else ""
    if not text:
        text = body[:4096].decode("utf-8", "replace")
    text = " ".join(redact(text).split())
    return text[:200] + ("..." if len(text) > 200 else "")


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asks to wait (``Retry-After`` as seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(min(int(value[:9]), 10**8))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _when(seconds: float) -> str:
    at = time.strftime("%H:%M:%S", time.localtime(time.time() + seconds))
    if seconds < 120:
        return f"{seconds:.0f} s (at {at})"
    return f"{seconds / 60:.0f} min (at {at})"


def describe_failure(exc: Exception) -> str:
    """A short reason for a transport failure."""
    cause: BaseException | None = exc
    while cause is not None:  # httpx wraps httpcore, which wraps the ssl module's error
        if isinstance(cause, ssl.SSLCertVerificationError):
            why = (cause.verify_message or cause.reason or "not trusted").rstrip(".")
            hint = ("check the server URL" if "mismatch" in why.lower()
                    else "set engine.ca_bundle to trust a private CA")
            return f"the server's TLS certificate failed the check ({why}); {hint}"
        if isinstance(cause, ssl.SSLError):
            why = (cause.reason or str(cause)).replace("_", " ").lower()
            return f"the TLS handshake failed ({why}; is the server plain http://?)"
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.ConnectTimeout):
        return "no answer (connect timed out)"
    if isinstance(exc, httpx.ConnectError):
        reason = str(exc)
        if "refused" in reason.lower():
            return "cannot connect (connection refused)"
        return f"cannot connect ({' '.join(reason.split()) or type(exc).__name__})"
    if isinstance(exc, httpx.ReadTimeout):
        return "the server stopped sending (read timed out)"
    if isinstance(exc, httpx.TimeoutException):
        return "the request timed out"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the server closed the connection mid-reply"
    if isinstance(exc, (httpx.ReadError, httpx.WriteError)):
        return "the connection was lost mid-reply"
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
        return "not a valid http:// or https:// URL"
    return " ".join(str(exc).split()) or type(exc).__name__


def status_problem(response: httpx.Response, path: str, body: bytes = b"") -> str:
    """The one-line problem for a non-2xx answer whose (bounded) ``body`` was read."""
    message = _error_message(body)
    code = response.status_code
    detail = f"HTTP {code} on {path}" + (f": {message}" if message else "")
    if code in (401, 403):
        return f"the server refused the API key ({detail})"
    if code in (429, 503):
        wait = retry_after(response)
        when = f"; it asks to retry in {_when(wait)}" if wait is not None else ""
        what = "is busy" if code == 429 else "is not ready yet"
        return f"the server {what} ({detail}){when}"
    if 300 <= code < 400:
        where = response.headers.get("location", "")[:200] or "elsewhere"
        return (f"the server redirects {path} to {where}: rpchat does not follow redirects (the API key "
                "must not go to another host); set the server URL to the new address")
    return detail


@dataclass(frozen=True)
class Transport:
    """How requests go out: the key, TLS, and how long to wait."""

    api_key: str | None = None
    timeout: float = 30.0  # connect, and each probe's first byte
    stream_timeout: float = 600.0  # a reply's first byte, and the longest gap without progress
    tls_verify: bool = True
    ca_bundle: str | None = None
    allow_insecure_key: bool = False


def _tls(transport: Transport, url: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if not transport.tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif transport.ca_bundle:
        bundle = os.path.expanduser(transport.ca_bundle)
        try:
            ctx.load_verify_locations(cafile=bundle)
        except (OSError, ssl.SSLError) as e:
            reason = e.reason if isinstance(e, ssl.SSLError) else e.strerror
            why = str(reason or "not a PEM file of certificates").replace("_", " ").lower()
            raise EngineError(f"engine.ca_bundle: cannot use {bundle} ({why})", url) from None
    return ctx


def _check_key(key: str, url: httpx.URL, transport: Transport, shown: str) -> None:
    if not all(32 < ord(c) < 127 for c in key):
        raise EngineError("the API key has characters an HTTP header cannot carry (spaces, line breaks or "
                          "non-ASCII): check engine.api_key or $RPCHAT_API_KEY", shown)
    if url.scheme == "http" and not is_loopback(url.host) and not transport.allow_insecure_key:
        raise EngineError(f"refusing to send the API key over plain http:// to {url.host}: use https://, or "
                          "set engine.allow_insecure_key: true to send it anyway", shown)


class Connection:
    """One httpx client bound to a server URL; failures become `EngineError`s naming the URL."""

    def __init__(
        self, url: str, api_key: str | None, timeout: float, stream_timeout: float,
        transport: Transport | None = None,
    ) -> None:
        t = dataclasses.replace(transport or Transport(), api_key=api_key or None, timeout=timeout,
                                stream_timeout=stream_timeout)
        self.url = shown_url(url)
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise EngineError(f"not a valid URL ({exc})", self.url) from None
        if parsed.scheme not in ("http", "https"):
            raise EngineError("not a valid http:// or https:// URL", self.url)
        for name, value in (("engine.timeout", timeout), ("engine.stream_timeout", stream_timeout)):
            if not value > 0:
                raise EngineError(f"{name} must be more than 0 seconds (got {value})", self.url)
        self.notices: list[str] = []
        headers = {"Accept-Encoding": "identity"}
        if t.api_key:
            remember_secret(t.api_key)
            _check_key(t.api_key, parsed, t, self.url)
            headers["Authorization"] = f"Bearer {t.api_key}"
            if parsed.scheme == "http" and not is_loopback(parsed.host):
                self.notices.append(f"the API key goes to {parsed.host} over plain http:// "
                                    "(engine.allow_insecure_key is on): anyone on the way can read it")
        if parsed.scheme == "https" and not t.tls_verify:
            self.notices.append("TLS certificate checks are off (engine.tls_verify: false): this may not be "
                                "the server you think, and it sees your key and chat")
        self.stream_timeout = httpx.Timeout(stream_timeout, connect=timeout)
        self.no_progress_s = stream_timeout
        self.timeout_s = timeout
        try:
            self.client = httpx.Client(base_url=url, headers=headers, timeout=timeout, verify=_tls(t, self.url),
                                       follow_redirects=False)
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise EngineError(f"not a valid URL ({exc})", self.url) from None

    def fail(self, problem: str) -> EngineError:
        """An EngineError about this server."""
        return EngineError(problem, self.url)

    @contextlib.contextmanager
    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, *,
        timeout: httpx.Timeout | None = None, wait: Callable[[float], bool] | None = None,
    ) -> Iterator[httpx.Response]:
        """Send a request; yield the response with its body unread.

        Redirects and refused keys raise. A 429/503 that asks to wait at most `RETRY_MAX_S` is sent once
        more after that wait (``wait`` returns True to give up early, e.g. on cancel); any other answer
        is the caller's to judge. Transport failures raise one-line `EngineError`s.
        """
        pause = wait or _sleep
        kwargs: dict[str, Any] = {"json": body} if body is not None else {}
        if timeout is not None:
            kwargs["timeout"] = timeout
        for attempt in (0, 1):
            answered = False
            try:
                with self.client.stream(method, path, **kwargs) as resp:
                    answered = True
                    code = resp.status_code
                    delay = retry_after(resp) if code in (429, 503) else None
                    if attempt == 0 and delay is not None and delay <= RETRY_MAX_S:
                        resp.close()
                        if pause(delay):
                            raise self.fail("cancelled while waiting to retry")
                        continue
                    if code in (401, 403) or 300 <= code < 400:
                        raise self.fail(status_problem(resp, path, self._error_body(resp)))
                    yield resp
                    return
            except httpx.TimeoutException as exc:
                if answered:
                    raise self.fail(describe_failure(exc)) from None
                name, limit = ("engine.stream_timeout", self.no_progress_s) if timeout else ("engine.timeout",
                                                                                           self.timeout_s)
                if isinstance(exc, httpx.ConnectTimeout):
                    name, limit = "engine.timeout", self.timeout_s
                raise self.fail(f"no answer within {limit:g} s ({name})") from None
            except httpx.HTTPError as exc:
                raise self.fail(describe_failure(exc)) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def read_json(self, resp: httpx.Response, path: str) -> Any:
        """The response's JSON (None when it is not JSON); JSON nested too deep or too big raises."""
        try:
            raw = read_body(resp)
        except EngineError as e:
            raise self.fail(e.problem) from None
        except httpx.HTTPError as exc:
            raise self.fail(describe_failure(exc)) from None
        try:
            return loads(raw.decode("utf-8", "replace"))
        except EngineError as e:
            raise self.fail(f"{path}: {e.problem}") from None

    def _error_body(self, resp: httpx.Response) -> bytes:
        try:
            return read_body(resp, 64 * 1024)
        except (EngineError, httpx.HTTPError):
            return b""

    def problem(self, resp: httpx.Response, path: str) -> str:
        """`status_problem` for a non-2xx response whose body is still unread."""
        return status_problem(resp, path, self._error_body(resp))

    def probe(self, path: str) -> Any | None:
        """GET ``path``: its JSON, or None when the server does not have it. Transport and auth errors raise."""
        with self.request("GET", path) as response:
            if response.status_code in (429, 503):  # llama-server answers 503 everywhere while it loads
                raise self.fail(self.problem(response, path))
            if response.status_code != 200:
                return None
            return self.read_json(response, path)

    def post(self, path: str, body: dict[str, Any], *, optional: bool = False) -> Any | None:
        """POST JSON to ``path`` and return the JSON answer; with ``optional`` a 4xx/5xx answer gives None."""
        with self.request("POST", path, body) as response:
            if response.status_code != 200:
                if optional:
                    return None
                raise self.fail(self.problem(response, path))
            answer = self.read_json(response, path)
        if answer is None and not optional:
            raise self.fail(f"{path} answered with something that is not JSON")
        return answer

    def close(self) -> None:
        """Close the pooled connections."""
        self.client.close()


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


def as_int(value: Any) -> int | None:
    """A JSON number as an int; None for anything else."""
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def loads(data: str) -> Any:
    """Parsed JSON, or None when ``data`` is not JSON; JSON nested deeper than Python can parse raises."""
    try:
        return json.loads(data)
    except ValueError:
        return None
    except RecursionError:
        raise EngineError("the server sent JSON nested too deeply to read") from None


class ServerApi:
    """One server protocol. Subclasses fill in the request body, the event parser and the probes."""

    name = ""  # the config value: "llama.cpp", "openai" or "koboldcpp"
    label = ""  # shown to the user
    path = ""  # the streaming endpoint
    supported: frozenset[str] = frozenset()

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.n_ctx: int | None = None
        self.model_name = ""
        self.notices: list[str] = []

    def probe(self) -> None:
        """Learn the context size and model name (called once by `RemoteEngine.load`)."""

    def count(self, text: str) -> int | None:
        """Tokens in ``text`` by the server's tokenizer, or None when the server has none."""
        return None

    def body(
        self, prompt: Sequence[Segment], sampling: Sampling, stop: Sequence[str], n_ctx: int
    ) -> dict[str, Any]:
        """The JSON body of the streaming request."""
        raise NotImplementedError

    def parse(self, event: str, data: str) -> Chunk | None:
        """One SSE event to a `Chunk` (None for events that carry nothing)."""
        raise NotImplementedError

    def unsupported(self, sampling: Sampling) -> list[str]:
        """The sampler settings in ``sampling`` this API cannot honour."""
        return unsupported_settings(sampling, self.supported)

    def abort(self, body: dict[str, Any]) -> None:
        """Ask the server to stop the generation ``body`` started (besides closing the stream)."""

    def after(self) -> Chunk | None:
        """Final figures fetched after the stream ended, when the stream itself lacks them."""
        return None
