"""HTTP plumbing shared by the remote server protocols.

`Connection` wraps one httpx client and turns every transport or HTTP failure into a one-line
`EngineError` naming the URL. `ServerApi` is what each protocol (see `remote_apis`) implements: it turns
a prompt and `Sampling` into one streaming request body, parses SSE events into `Chunk`s, and says
which sampler settings it cannot honour.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from rpchat.engine.base import FinishReason, PromptProgress, Sampling
from rpchat.errors import EngineError
from rpchat.prompt.segments import Segment

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
_NEUTRAL = Sampling()


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
            if getattr(sampling, name) != getattr(_NEUTRAL, name):
                missing.append(name)
        elif primary in supported and getattr(sampling, primary) != getattr(_NEUTRAL, primary):
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


def _error_message(response: httpx.Response) -> str:
    """The server's own error text, from whichever JSON shape it uses, on one short line."""
    try:
        body: Any = json.loads(response.read() or b"null")
    except (ValueError, httpx.HTTPError):
        body = None
    text = ""
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body.get("msg")))
        if isinstance(err, dict):
            err = err.get("message", err.get("msg", err.get("error")))
        elif isinstance(err, list) and err and isinstance(err[0], dict):
            err = err[0].get("msg")
        text = str(err) if err is not None else ""
    if not text:
        try:
            text = response.text
        except (httpx.HTTPError, UnicodeDecodeError):
            text = ""
    text = " ".join(text.split())
    return text[:200] + ("..." if len(text) > 200 else "")


def describe_failure(exc: Exception) -> str:
    """A short reason for a transport failure."""
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


def status_problem(response: httpx.Response, path: str) -> str:
    """The one-line problem for a non-2xx answer."""
    message = _error_message(response)
    code = response.status_code
    if code in (401, 403):
        return f"the server refused the API key (HTTP {code} on {path})" + (f": {message}" if message else "")
    return f"HTTP {code} on {path}" + (f": {message}" if message else "")


class Connection:
    """One httpx client bound to a server URL; failures become `EngineError`s naming the URL."""

    def __init__(self, url: str, api_key: str | None, timeout: float, stream_timeout: float) -> None:
        self.url = url
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.stream_timeout = httpx.Timeout(stream_timeout, connect=timeout)
        try:
            self.client = httpx.Client(base_url=url, headers=headers, timeout=timeout)
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise EngineError(f"not a valid URL ({exc})", url) from None

    def fail(self, problem: str) -> EngineError:
        """An EngineError about this server."""
        return EngineError(problem, self.url)

    def probe(self, path: str) -> Any | None:
        """GET ``path``: its JSON, or None when the server does not have it. Transport and auth errors raise."""
        try:
            response = self.client.get(path)
        except httpx.HTTPError as exc:
            raise self.fail(describe_failure(exc)) from None
        if response.status_code in (401, 403):
            raise self.fail(status_problem(response, path))
        if response.status_code == 503:  # llama-server answers 503 everywhere while it loads the model
            raise self.fail(f"the server is not ready yet ({status_problem(response, path)})")
        if response.status_code != 200:
            return None
        try:
            return response.json()
        except ValueError:
            return None

    def post(self, path: str, body: dict[str, Any], *, optional: bool = False) -> Any | None:
        """POST JSON to ``path`` and return the JSON answer; with ``optional`` a 4xx/5xx answer gives None."""
        try:
            response = self.client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise self.fail(describe_failure(exc)) from None
        if response.status_code in (401, 403) or (response.status_code != 200 and not optional):
            raise self.fail(status_problem(response, path))
        if response.status_code != 200:
            return None
        try:
            return response.json()
        except ValueError:
            if optional:
                return None
            raise self.fail(f"{path} answered with something that is not JSON") from None

    def close(self) -> None:
        """Close the pooled connections."""
        self.client.close()


def as_int(value: Any) -> int | None:
    """A JSON number as an int; None for anything else."""
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def loads(data: str) -> Any:
    """Parsed JSON, or None when ``data`` is not JSON."""
    try:
        return json.loads(data)
    except ValueError:
        return None


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
