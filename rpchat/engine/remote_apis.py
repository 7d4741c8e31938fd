"""The three wire protocols the remote engine speaks: llama.cpp server, OpenAI-compatible, KoboldCpp."""

from __future__ import annotations

import dataclasses
import math
import secrets
from collections.abc import Sequence
from typing import Any

import httpx

from rpchat.engine.alternatives import llama_server_steps, openai_steps
from rpchat.engine.base import FinishReason, PromptProgress, Sampling
from rpchat.engine.remote_http import Chunk, Connection, ServerApi, as_int, loads
from rpchat.errors import EngineError
from rpchat.prompt.segments import Segment, join_text

_LLAMA_FIELDS = frozenset({
    "temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_penalty", "repeat_last_n",
    "presence_penalty", "frequency_penalty", "dry_multiplier", "dry_base", "dry_allowed_length",
    "dry_penalty_last_n", "dry_sequence_breakers", "xtc_probability", "xtc_threshold", "mirostat",
    "mirostat_tau", "mirostat_eta", "dynatemp_range", "dynatemp_exponent",
})  # fmt: skip

# `Sampling` windows where -1 means "the whole context", as on llama.cpp's command line. Servers want a
# token count: llama-server's request schema refuses -1 with HTTP 400 (hard limit 0 <= value, where 0
# turns the sampler off). `request_body` spells them as the context size for every API.
WHOLE_CONTEXT_WINDOWS = ("repeat_last_n", "dry_penalty_last_n")


def request_body(
    api: ServerApi, prompt: Sequence[Segment], sampling: Sampling, stop: Sequence[str], n_ctx: int
) -> dict[str, Any]:
    """The streaming request ``api`` sends, with every "-1 = whole context" window spelled as ``n_ctx``."""
    spelled: dict[str, Any] = {name: n_ctx for name in WHOLE_CONTEXT_WINDOWS if getattr(sampling, name) < 0}
    return api.body(prompt, dataclasses.replace(sampling, **spelled), stop, n_ctx)


class LlamaServerApi(ServerApi):
    """llama.cpp's ``llama-server`` native ``/completion`` endpoint."""

    name = "llama.cpp"
    label = "remote (llama.cpp server)"
    path = "/completion"
    supported = _LLAMA_FIELDS | {"temperature_last", "n_probs"}

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self.default_samplers: list[str] = []
        self.tokenize_ok = True

    def probe(self) -> None:
        props = self.conn.probe("/props")
        if not isinstance(props, dict):
            raise self.conn.fail("GET /props failed: is this a llama.cpp server?")
        settings = props.get("default_generation_settings")
        settings = settings if isinstance(settings, dict) else {}
        self.n_ctx = as_int(settings.get("n_ctx")) or as_int(props.get("n_ctx"))
        if not self.n_ctx:
            slots = self.conn.probe("/slots")
            if isinstance(slots, list) and slots and isinstance(slots[0], dict):
                self.n_ctx = as_int(slots[0].get("n_ctx"))
        params = settings.get("params", settings)
        params = params if isinstance(params, dict) else {}
        samplers = params.get("samplers")
        if isinstance(samplers, list):
            self.default_samplers = [str(s) for s in samplers]
        else:  # without the server's own order, moving temperature could drop a sampler
            self.supported = self.supported - {"temperature_last"}
        # Servers before late 2024 still had TFS; current ones dropped it and ignore tfs_z.
        if "tfs_z" in params:
            self.supported = self.supported | {"tfs_z"}
        path = props.get("model_path") or props.get("model_alias") or ""
        self.model_name = str(path).replace("\\", "/").rsplit("/", 1)[-1]

    def tokenize(self, text: str, *, special: bool, bos: bool = False) -> list[int] | None:
        """Token ids from ``/tokenize``; None when the server cannot do it."""
        body = {"content": text, "add_special": bos, "parse_special": special}
        answer = self.conn.post("/tokenize", body, optional=True)
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            return None
        return tokens

    def count(self, text: str) -> int | None:
        tokens = self.tokenize(text, special=False)
        return None if tokens is None else len(tokens)

    def prompt(self, segments: Sequence[Segment]) -> str | list[int | str]:
        """The prompt as text when that is safe, else as token ids so user text never turns into control tokens.

        llama-server parses special tokens in text prompts. When user text contains one (a typed ``</s>``)
        the prompt goes as ids: the whole prompt tokenized as plain text when the template has no control
        tokens, or template strings mixed with user token ids otherwise.
        """
        text = join_text(list(segments))
        user = "\n".join(s.text for s in segments if s.kind == "user")
        if not user or not self.tokenize_ok:
            return text
        plain = self.tokenize(user, special=False)
        parsed = self.tokenize(user, special=True)
        if plain is None or parsed is None:
            self.tokenize_ok = False
            self.notices.append("the server's /tokenize failed: user text is sent as text")
            return text
        if plain == parsed:
            return text  # no control-token text in user segments: the plain string is exact
        template = "\n".join(s.text for s in segments if s.kind == "template")
        if self.tokenize(template, special=True) == self.tokenize(template, special=False):
            ids = self.tokenize(text, special=False, bos=True)
            if ids is not None:
                return list(ids)
        return self._mixed(segments)

    def _mixed(self, segments: Sequence[Segment]) -> list[int | str]:
        # Template runs stay strings (the server parses their control tokens); user runs become ids.
        # A leading string makes the server add BOS, so an empty one goes first when user text leads.
        runs: list[Segment] = []
        for s in segments:
            if runs and runs[-1].kind == s.kind:
                runs[-1] = Segment(runs[-1].text + s.text, s.kind)
            elif s.text:
                runs.append(s)
        out: list[int | str] = [] if runs and runs[0].kind == "template" else [""]
        for run in runs:
            if run.kind == "template":
                out.append(run.text)
            else:
                ids = self.tokenize(run.text, special=False)
                if ids is None:
                    raise self.conn.fail("POST /tokenize failed while building the prompt")
                out.extend(ids)
        return out

    def body(
        self, prompt: Sequence[Segment], sampling: Sampling, stop: Sequence[str], n_ctx: int
    ) -> dict[str, Any]:
        s = sampling
        body: dict[str, Any] = {name: getattr(s, name) for name in sorted(_LLAMA_FIELDS)}
        if s.dry_sequence_breakers:
            body["dry_sequence_breakers"] = list(s.dry_sequence_breakers)
        else:  # llama-server refuses an empty list (HTTP 400); left out, its own breakers apply
            del body["dry_sequence_breakers"]
        body.update(
            prompt=self.prompt(prompt),
            stream=True,
            cache_prompt=True,
            return_progress=True,  # prompt_progress events while the prompt is read
            n_predict=s.max_tokens,
            stop=list(stop),
            seed=-1 if s.seed is None else s.seed,
        )
        if "tfs_z" in self.supported:
            body["tfs_z"] = s.tfs_z
        if s.n_probs > 0:  # raw probabilities (no post_sampling_probs), as the local engine keeps them
            body["n_probs"] = s.n_probs
        if not s.temperature_last and self.default_samplers:
            rest = [x for x in self.default_samplers if x != "temperature"]
            lead = [x for x in rest if x in ("penalties", "dry")]
            body["samplers"] = lead + ["temperature"] + [x for x in rest if x not in lead]
        return body

    def parse(self, event: str, data: str) -> Chunk | None:
        obj = loads(data)
        if not isinstance(obj, dict):
            return None
        if "error" in obj:
            err = obj["error"]
            return Chunk(error=str(err.get("message", err) if isinstance(err, dict) else err))
        chunk = Chunk(text=str(obj.get("content") or ""), progress=_prompt_progress(obj.get("prompt_progress")),
                      steps=llama_server_steps(obj.get("completion_probabilities")))
        if obj.get("stop") is True:
            chunk.done = True
            kind = obj.get("stop_type")
            if kind == "eos" or obj.get("stopped_eos"):
                chunk.finish = "eos"
            elif kind == "limit" or obj.get("stopped_limit"):
                chunk.finish = "length"
            else:
                chunk.finish = "stop"
            timings: dict[str, Any] = obj["timings"] if isinstance(obj.get("timings"), dict) else {}
            total = as_int(obj.get("tokens_evaluated"))
            evaluated = as_int(timings.get("prompt_n"))
            reused = as_int(timings.get("cache_n"))
            if reused is None and total is not None and evaluated is not None:
                reused = max(0, total - evaluated)
            generated = as_int(timings.get("predicted_n")) or as_int(obj.get("tokens_predicted"))
            for key, value in (("prompt", total), ("evaluated", evaluated), ("reused", reused),
                               ("generated", generated)):  # fmt: skip
                if value is not None:
                    chunk.stats[key] = value
        return chunk


def _prompt_progress(value: Any) -> PromptProgress | None:
    """llama-server's ``prompt_progress`` (total, cache, processed, time_ms), cached tokens left out."""
    if not isinstance(value, dict):
        return None
    total, processed = as_int(value.get("total")), as_int(value.get("processed"))
    if total is None or processed is None:
        return None
    cache = as_int(value.get("cache")) or 0
    ms = as_int(value.get("time_ms")) or 0
    return PromptProgress(max(0, processed - cache), max(0, total - cache), ms / 1000)


class OpenAIApi(ServerApi):
    """Any OpenAI-compatible ``/v1/completions`` (vLLM, TabbyAPI, text-generation-webui, KoboldCpp...)."""

    name = "openai"
    label = "remote (OpenAI-compatible)"
    path = "/v1/completions"
    # top_k, min_p and a repetition penalty are extensions that vLLM, TabbyAPI, text-generation-webui,
    # KoboldCpp and llama-cpp-python all accept; the rest of `Sampling` has no common spelling.
    supported = frozenset(
        {"temperature", "top_p", "top_k", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty",
         "n_probs"}
    )

    # Token counting endpoints, tried in order: llama-server/vLLM, llama-cpp-python,
    # text-generation-webui, TabbyAPI, KoboldCpp.
    _COUNTERS = (
        "/tokenize",
        "/extras/tokenize",
        "/v1/internal/token-count",
        "/v1/token/encode",
        "/api/extra/tokencount",
    )

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self.counter: str | None = None
        self.count_offset = 0  # tokens a counter adds on its own (BOS)

    def probe(self) -> None:
        models = self.conn.probe("/v1/models")
        data = models.get("data") if isinstance(models, dict) else None
        if not isinstance(data, list):
            raise self.conn.fail("GET /v1/models failed: is this an OpenAI-compatible server?")
        first = data[0] if data and isinstance(data[0], dict) else {}
        self.model_name = str(first.get("id") or "")
        for key in ("max_model_len", "context_length", "max_context_length", "n_ctx"):
            if as_int(first.get(key)):
                self.n_ctx = as_int(first.get(key))
                break
        if not self.n_ctx:  # TabbyAPI and KoboldCpp report it elsewhere
            tabby = self.conn.probe("/v1/model")
            params = tabby.get("parameters") if isinstance(tabby, dict) else None
            if isinstance(params, dict):
                self.n_ctx = as_int(params.get("max_seq_len"))
        if not self.n_ctx:
            kobold = self.conn.probe("/api/extra/true_max_context_length")
            if isinstance(kobold, dict):
                self.n_ctx = as_int(kobold.get("value"))
        for path in self._COUNTERS:
            base = self._count_at(path, "")
            if self._count_at(path, "Hello world") is not None:
                self.counter = path
                self.count_offset = base or 0
                break
        self.notices.append(
            "the server tokenizes the prompt text itself (control-token text in it may be parsed)"
        )

    def _count_at(self, path: str, text: str) -> int | None:
        body = {"content": text, "input": text, "prompt": text, "text": text, "add_special": False,
                "parse_special": False, "add_special_tokens": False, "add_bos_token": False}  # fmt: skip
        if self.model_name:
            body["model"] = self.model_name
        answer = self.conn.post(path, body, optional=True)
        if not isinstance(answer, dict):
            return None
        tokens = answer.get("tokens")
        if isinstance(tokens, list):
            return len(tokens)
        for key in ("count", "length", "value"):
            n = as_int(answer.get(key))
            if n is not None and n >= 0:
                return n
        return None

    def count(self, text: str) -> int | None:
        if self.counter is None:
            return None
        n = self._count_at(self.counter, text)
        return None if n is None else max(0, n - self.count_offset)

    def body(
        self, prompt: Sequence[Segment], sampling: Sampling, stop: Sequence[str], n_ctx: int
    ) -> dict[str, Any]:
        s = sampling
        body: dict[str, Any] = {
            "prompt": join_text(list(prompt)),
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "top_k": s.top_k,
            "min_p": s.min_p,
            "presence_penalty": s.presence_penalty,
            "frequency_penalty": s.frequency_penalty,
            # vLLM, TabbyAPI and text-generation-webui spell it one way, llama.cpp servers the other.
            "repetition_penalty": s.repeat_penalty,
            "repeat_penalty": s.repeat_penalty,
        }
        if self.model_name:
            body["model"] = self.model_name
        if stop:
            body["stop"] = list(stop)
        if s.seed is not None:
            body["seed"] = s.seed
        if s.n_probs > 0:  # the completions API's top alternatives per token (OpenAI allows up to 5)
            body["logprobs"] = min(s.n_probs, 5)
        return body

    def parse(self, event: str, data: str) -> Chunk | None:
        if data.strip() == "[DONE]":
            return Chunk(done=True)
        obj = loads(data)
        if not isinstance(obj, dict):
            return None
        if "error" in obj:
            err = obj["error"]
            return Chunk(error=str(err.get("message", err) if isinstance(err, dict) else err))
        chunk = Chunk()
        choices = obj.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            choice = choices[0]
            chunk.text = str(choice.get("text") or "")
            chunk.steps = openai_steps(choice.get("logprobs"))
            reason = choice.get("finish_reason")
            if reason == "length":
                chunk.finish = "length"
            elif reason is not None:
                chunk.finish = "stop"  # the OpenAI API does not tell a stop string from end-of-text
        usage = obj.get("usage")
        if isinstance(usage, dict):
            prompt, generated = as_int(usage.get("prompt_tokens")), as_int(usage.get("completion_tokens"))
            details = usage.get("prompt_tokens_details")
            cached = as_int(details.get("cached_tokens")) if isinstance(details, dict) else None
            if prompt is not None:
                chunk.stats["prompt"] = prompt
                if cached is not None:
                    chunk.stats["reused"] = cached
                    chunk.stats["evaluated"] = max(0, prompt - cached)
            if generated is not None:
                chunk.stats["generated"] = generated
        return chunk


# KoboldCpp sampler ids: 0 top-k, 1 top-a, 2 TFS, 3 typical, 4 top-p, 5 temperature, 6 repetition penalty.
_KOBOLD_ORDER_TEMP_LAST = [6, 0, 1, 3, 4, 2, 5]
_KOBOLD_ORDER_TEMP_FIRST = [6, 5, 0, 1, 3, 4, 2]


class KoboldApi(ServerApi):
    """KoboldCpp's native ``/api/extra/generate/stream`` (SSE ``event: message``, ``data: {"token": ...}``)."""

    name = "koboldcpp"
    label = "remote (KoboldCpp)"
    path = "/api/extra/generate/stream"
    supported = (_LLAMA_FIELDS - {"frequency_penalty"}) | {"tfs_z", "temperature_last", "banned_phrases"}

    def probe(self) -> None:
        version = self.conn.probe("/api/extra/version")
        if not isinstance(version, dict) or "version" not in version:
            raise self.conn.fail("GET /api/extra/version failed: is this a KoboldCpp server?")
        for path in ("/api/extra/true_max_context_length", "/api/v1/config/max_context_length"):
            answer = self.conn.probe(path)
            if isinstance(answer, dict) and as_int(answer.get("value")):
                self.n_ctx = as_int(answer.get("value"))
                break
        model = self.conn.probe("/api/v1/model")
        name = str(model.get("result") or "") if isinstance(model, dict) else ""
        self.model_name = name.removeprefix("koboldcpp/")
        self.notices.append(
            "KoboldCpp tokenizes the prompt text itself (control-token text in it may be parsed)"
        )

    def count(self, text: str) -> int | None:
        answer = self.conn.post("/api/extra/tokencount", {"prompt": text}, optional=True)
        n = as_int(answer.get("value")) if isinstance(answer, dict) else None
        return n if n is not None and n >= 0 else None

    def body(
        self, prompt: Sequence[Segment], sampling: Sampling, stop: Sequence[str], n_ctx: int
    ) -> dict[str, Any]:
        s = sampling
        # A fresh key per request lets /api/extra/abort stop this generation even on a shared server.
        body: dict[str, Any] = {
            "prompt": join_text(list(prompt)),
            "max_length": s.max_tokens,
            "max_context_length": n_ctx,
            "temperature": s.temperature,
            "top_k": s.top_k,
            "top_a": 0.0,
            "top_p": s.top_p,
            "min_p": s.min_p,
            "typical": s.typical_p,
            "tfs": s.tfs_z,
            "rep_pen": s.repeat_penalty if s.repeat_last_n != 0 else 1.0,
            "rep_pen_range": s.repeat_last_n,
            "presence_penalty": s.presence_penalty,
            "mirostat": s.mirostat,
            "mirostat_tau": s.mirostat_tau,
            "mirostat_eta": s.mirostat_eta,
            "dry_multiplier": s.dry_multiplier,
            "dry_base": s.dry_base,
            "dry_allowed_length": s.dry_allowed_length,
            "dry_penalty_last_n": s.dry_penalty_last_n,
            "dry_sequence_breakers": list(s.dry_sequence_breakers),
            "xtc_threshold": s.xtc_threshold,
            "xtc_probability": s.xtc_probability,
            "dynatemp_range": s.dynatemp_range,
            "dynatemp_exponent": s.dynatemp_exponent,
            "sampler_order": _KOBOLD_ORDER_TEMP_LAST if s.temperature_last else _KOBOLD_ORDER_TEMP_FIRST,
            "sampler_seed": -1 if s.seed is None else s.seed,
            "stop_sequence": list(stop),
            "trim_stop": True,
            "genkey": "KCPP" + secrets.token_hex(4).upper(),
        }
        if s.banned_phrases:  # KoboldCpp 1.76+ bans these strings by backtracking ("anti-slop")
            body["banned_tokens"] = list(s.banned_phrases)
        return body

    def parse(self, event: str, data: str) -> Chunk | None:
        obj = loads(data)
        if not isinstance(obj, dict):
            return None
        if "error" in obj:
            return Chunk(error=str(obj["error"]))
        chunk = Chunk(text=str(obj.get("token") or ""))
        reason = obj.get("finish_reason")
        if reason:
            # KoboldCpp ends the response right after this event; "stop" covers EOS and stop strings alike.
            chunk.finish = "length" if reason == "length" else "stop"
        return chunk

    def abort(self, body: dict[str, Any]) -> None:
        try:
            self.conn.client.post("/api/extra/abort", json={"genkey": body.get("genkey", "")}, timeout=2.0)
        except httpx.HTTPError:
            pass  # the stream is closed anyway; a dead server needs no abort

    def after(self) -> Chunk | None:
        # /api/extra/perf tells EOS from a stop string (stop_reason 1 = EOS, 2 = stop string, 0 = length).
        try:
            perf = self.conn.probe("/api/extra/perf")
        except EngineError:
            return None
        if not isinstance(perf, dict):
            return None
        chunk = Chunk()
        reason = as_int(perf.get("stop_reason"))
        finishes: dict[int, FinishReason] = {0: "length", 1: "eos", 2: "stop"}
        chunk.finish = finishes.get(reason) if reason is not None else None
        generated = as_int(perf.get("last_token_count"))
        prompt = as_int(perf.get("last_input_count"))
        if generated is not None:
            chunk.stats["generated"] = generated
        if prompt is not None:
            chunk.stats["prompt"] = prompt
        return chunk


def estimate_tokens(text: str) -> int:
    """A tokenizer-free guess: about 3.5 characters per token for English prose."""
    return math.ceil(len(text) / 3.5)


API_CLASSES: dict[str, type[ServerApi]] = {
    "llama.cpp": LlamaServerApi,
    "openai": OpenAIApi,
    "koboldcpp": KoboldApi,
}
