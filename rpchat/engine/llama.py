"""The local engine: llama.cpp through llama-cpp-python's low-level API.

It keeps the token list that sits in the KV cache, so each turn evaluates only what changed (and
shifts the cache when old turns were cut), evaluates prompts in chunks that a cancel can stop, and
runs a lean per-token loop. llama.cpp's logs go to a file, never to the terminal.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rpchat.engine.base import EngineInfo, ProgressCallback, PromptProgressCallback, Result, Sampling
from rpchat.engine.gguf_info import ModelInfo
from rpchat.engine.kvstate import KVStates
from rpchat.errors import EngineError, ModelError
from rpchat.paths import profile
from rpchat.prompt.segments import Segment

KV_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "bf16": 30}
_SPECIAL_ATTRS = 1 | 8  # LLAMA_TOKEN_ATTR_UNKNOWN | CONTROL: what parse_special recognises in text
_OOM_HINTS = ("out of memory", "failed to allocate", "unable to allocate", "cannot allocate", "bad_alloc")


@dataclass(frozen=True)
class LocalSettings:
    """How to run a GGUF model in-process."""

    model_path: Path
    n_ctx: int = 4096  # rounded up to a multiple of 256
    n_threads: int | None = None  # None: the physical core count (best guess)
    n_batch: int = 512  # prompt tokens per llama_decode call (and per cancel check)
    n_gpu_layers: int | None = None  # None: all layers when the build can offload, else 0
    flash_attn: bool | None = None  # None: llama.cpp decides
    kv_type: str = "f16"
    lora_path: Path | None = None
    lora_scale: float = 1.0
    use_extra_bufts: bool | None = None  # None: decided by the repack preflight
    context_shift: bool = True  # shift the KV cache when the prompt loses a span in the middle


def round_ctx(n_ctx: int) -> int:
    """llama-cpp-python wants n_ctx as a multiple of 256."""
    return max(256, -(-int(n_ctx) // 256) * 256)


def default_threads() -> int:
    """Physical cores, guessed: hyperthreads slow token generation down."""
    n = os.cpu_count() or 2
    return max(1, n // 2) if n > 4 else n


# --- llama.cpp logs -> file -------------------------------------------------------------------

_log_lock = threading.Lock()
_log_state: dict[str, Any] = {"path": None, "file": None, "callback": None, "recent": []}


def route_llama_logs() -> Path:
    """Send llama.cpp/ggml logs to ``<log dir>/llama.log`` (idempotent); returns the log path."""
    import llama_cpp

    path = profile().log_dir / "llama.log"
    with _log_lock:
        if _log_state["path"] != path:
            path.parent.mkdir(parents=True, exist_ok=True)
            old = _log_state["file"]
            _log_state["file"] = open(path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
            _log_state["path"] = path
            if old is not None:
                old.close()
        if _log_state["callback"] is None:

            def _on_log(level: int, text: bytes | None, _user: Any) -> None:
                try:
                    line = (text or b"").decode("utf-8", "replace")
                    fh = _log_state["file"]
                    if fh is not None:
                        fh.write(line)
                        if line.endswith("\n"):
                            fh.flush()
                    recent = _log_state["recent"]
                    recent.append(line)
                    if len(recent) > 64:
                        del recent[:32]
                except Exception:  # noqa: BLE001, S110 - an exception must never unwind into C
                    pass

            # The ctypes callback object must outlive every C call that may log.
            _log_state["callback"] = llama_cpp.llama_log_callback(_on_log)
            llama_cpp.llama_log_set(_log_state["callback"], ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
    return path


def _recent_log() -> str:
    return "".join(_log_state["recent"][-32:]).lower()


# --- cancel: a C-level abort flag -------------------------------------------------------------


def _c_strlen() -> Any:
    try:
        libc = ctypes.cdll.msvcrt if sys.platform == "win32" else ctypes.CDLL(None)
        return ctypes.cast(libc.strlen, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None


class _AbortFlag:
    """A byte llama.cpp polls between graph nodes. libc's ``strlen`` is the callback: it returns
    non-zero once the flag holds a character, so polling costs nanoseconds and no Python.

    While a prompt is evaluated a Python callback polls the same byte instead (`count_nodes`): it
    also counts the graph nodes done, for progress inside a long chunk, and turns a Ctrl+C that
    arrives mid-chunk into an abort. About a microsecond per node is nothing next to a prompt
    chunk, but would add up per generated token, so generation goes back to ``strlen``.
    """

    def __init__(self, llama_cpp: Any, ctx: Any) -> None:
        self._l = llama_cpp
        self.buf = ctypes.create_string_buffer(2)
        addr = _c_strlen()
        self.callback = llama_cpp.ggml_abort_callback(addr) if addr else None
        self.nodes = 0
        self.interrupted = False  # a KeyboardInterrupt arrived inside llama_decode
        self._on_node: Callable[[int], None] | None = None
        self._counting = llama_cpp.ggml_abort_callback(self._node_done)

    def arm(self, ctx: Any) -> None:
        """A fresh flag per generation: a late watcher of the last one cannot cancel this one."""
        self.buf = ctypes.create_string_buffer(2)
        self.attach(ctx)

    def attach(self, ctx: Any) -> None:
        """Poll the flag from C only (the per-token loop)."""
        if self.callback is not None:
            self._l.llama_set_abort_callback(ctx, self.callback, ctypes.cast(self.buf, ctypes.c_void_p))

    def count_nodes(self, ctx: Any, on_node: Callable[[int], None] | None) -> None:
        """Poll the flag from Python, counting graph nodes in ``nodes`` and calling ``on_node`` after each."""
        self.nodes = 0
        self.interrupted = False
        self._on_node = on_node
        self._l.llama_set_abort_callback(ctx, self._counting, None)

    def _node_done(self, _data: Any) -> bool:
        # Runs inside llama_decode: nothing may raise out of here into C.
        try:
            self.nodes += 1
            if self._on_node is not None:
                self._on_node(self.nodes)
        except KeyboardInterrupt:
            self.interrupted = True
            return True
        except Exception:  # noqa: BLE001, S110 - a broken progress display must not break the reply
            pass
        return bool(self.buf.raw[0])

    def clear(self) -> None:
        self.buf.value = b""

    def watch(self, cancel: threading.Event, done: threading.Event) -> None:
        """Mirror ``cancel`` into the flag from a helper thread while a generation runs."""
        buf = self.buf

        def run() -> None:
            while not done.is_set():
                if cancel.wait(0.05):
                    if not done.is_set():
                        buf.value = b"x"
                    return

        threading.Thread(target=run, name="rpchat-cancel-watch", daemon=True).start()


def _make_sampler(model: Any, ctx: Any, sampling: Sampling, history: Sequence[int]) -> Any:
    from rpchat.engine.sampling import SamplerChain

    return SamplerChain(model, ctx, sampling, history)


class LocalGeneration:
    """One streaming reply; iterate for text pieces, then read ``result``."""

    def __init__(self, run: Callable[[Result], Iterator[str]]) -> None:
        self.result = Result()
        self._it = run(self.result)

    def __iter__(self) -> Iterator[str]:
        return self._it

    def close(self) -> None:
        """Stop early and release the model (also happens when the object is dropped)."""
        close = getattr(self._it, "close", None)
        if close:
            close()


class LocalEngine:
    """A GGUF model in this process. One lock guards it; generation runs on the caller's thread."""

    def __init__(self, settings: LocalSettings) -> None:
        self.settings = settings
        self.lock = threading.Lock()
        self._model: Any = None
        self._ctx: Any = None
        self._lora: Any = None
        self._cache: list[int] = []  # exactly the tokens in the KV cache, positions 0..n-1
        self._n_ctx = round_ctx(settings.n_ctx)
        self._info = EngineInfo(Path(settings.model_path).stem, "CPU", self._n_ctx)
        self._meta: ModelInfo | None = None
        self._pieces: dict[int, tuple[bytes, bool]] = {}
        self._special_re: re.Pattern[str] | None = None
        self._special_ids: dict[str, int] = {}
        self._special_indexed = False
        self._plain_templates: set[str] = set()  # template texts known to hold no control token
        # Filled by loader.load():
        self._vocab: Any = None
        self._bos = -1
        self._add_bos = False
        self._batch_cap = 512
        self._can_shift = False
        self._abort: _AbortFlag | None = None
        self._graph_nodes = 0  # graph nodes llama.cpp computes per micro-batch (counted at warm-up)
        self.kv_states: KVStates | None = None  # saved chat states on disk (rpchat.engine.kvstate)

    # --- Engine protocol ----------------------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def cached_tokens(self) -> list[int]:
        """A copy of the tokens now in the KV cache (for tests and the benchmark)."""
        return list(self._cache)

    def load(self, progress: ProgressCallback | None = None) -> None:
        """Load the model; raises ModelError naming the file for anything that goes wrong."""
        from rpchat.engine import loader

        with self.lock:
            if self._model is not None:
                return
            loader.load(self, progress)
            if self.kv_states is not None:  # bench10: the saved states' key once, in the loading thread
                self.kv_states.prepare(self)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text, special=False))

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Tokens of ``text`` (no BOS); ``special`` parses control-token text like ``</s>``."""
        import llama_cpp

        self._require_loaded()
        data = text.encode("utf-8", "replace")
        if not data:
            return []
        cap = len(data) + 16
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, cap, False, special)
        if n < 0:
            cap = -n
            buf = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, cap, False, special)
        return list(buf[:n])

    def tokenize_prompt(self, prompt: Sequence[Segment]) -> list[int]:
        """BOS once, then the prompt; control tokens are recognised in template text only.

        Text between control tokens is tokenized as one run across segment borders, so the result
        equals llama.cpp's own tokenization of the joined prompt wherever the user typed no
        control-token text.
        """
        self._require_loaded()
        tokens: list[int] = [self._bos] if self._add_bos and self._bos >= 0 else []
        run: list[str] = []
        for seg in prompt:
            if seg.kind != "template" or not self._has_special(seg.text):
                run.append(seg.text)
                continue
            assert self._special_re is not None
            pos = 0
            for m in self._special_re.finditer(seg.text):
                run.append(seg.text[pos : m.start()])
                tokens += self.tokenize("".join(run))
                run = []
                tokens.append(self._special_ids[m.group(0)])
                pos = m.end()
            run.append(seg.text[pos:])
        tokens += self.tokenize("".join(run))
        return tokens

    def _has_special(self, text: str) -> bool:
        # Indexing a 256k vocabulary takes a while, so it waits for the first template with a
        # control token in it (many formats, LimaRP included, have none).
        if not self._special_indexed:
            if text in self._plain_templates:
                return False
            if self.tokenize(text, special=True) == self.tokenize(text, special=False):
                if len(self._plain_templates) > 4096:
                    self._plain_templates.clear()
                self._plain_templates.add(text)
                return False
            import llama_cpp

            from rpchat.engine.loader import index_special_tokens

            index_special_tokens(self, llama_cpp)
        return self._special_re is not None and self._special_re.search(text) is not None

    def stream(
        self,
        prompt: Sequence[Segment],
        sampling: Sampling,
        stop: Sequence[str] = (),
        cancel: threading.Event | None = None,
        progress: PromptProgressCallback | None = None,
    ) -> LocalGeneration:
        """Start a reply; nothing runs until the returned object is iterated."""
        return self._start(list(prompt), sampling, stop, cancel, progress)

    def generate_tokens(
        self,
        tokens: Sequence[int],
        sampling: Sampling,
        stop: Sequence[str] = (),
        cancel: threading.Event | None = None,
        progress: PromptProgressCallback | None = None,
    ) -> LocalGeneration:
        """Like `stream`, for an already tokenized prompt (the benchmark's plain-loop comparison)."""
        return self._start(list(tokens), sampling, stop, cancel, progress)

    def _start(
        self,
        prompt: list[Segment] | list[int],
        sampling: Sampling,
        stop: Sequence[str],
        cancel: threading.Event | None,
        progress: PromptProgressCallback | None = None,
    ) -> LocalGeneration:
        self._require_loaded()
        from rpchat.engine import generation

        return LocalGeneration(
            lambda result: generation.run(self, prompt, sampling, tuple(stop), cancel, result, progress)
        )

    def reset_cache(self) -> None:
        """Forget the KV cache (the next prompt is evaluated in full)."""
        import llama_cpp

        with self.lock:
            if self._ctx is not None:
                llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), True)
            self._cache = []

    def close(self) -> None:
        with self.lock:
            self._free()

    def _free(self) -> None:
        import llama_cpp

        if self._ctx is not None:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        # A LoRA adapter belongs to its model in current llama.cpp: freeing the model frees it.
        self._lora = None
        if self._model is not None:
            llama_cpp.llama_model_free(self._model)
            self._model = None
        self._cache = []

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - interpreter shutdown may have torn down ctypes
            pass

    # --- internals shared with loader.py / generation.py --------------------------------------

    def _require_loaded(self) -> None:
        if self._model is None:
            raise EngineError("the model is not loaded", self.settings.model_path)

    def _piece(self, token: int) -> tuple[bytes, bool]:
        """(bytes of the token's text, is end-of-generation), cached per token."""
        import llama_cpp

        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, 64, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
        entry = (buf.raw[: max(n, 0)], bool(llama_cpp.llama_vocab_is_eog(self._vocab, token)))
        self._pieces[token] = entry
        return entry


def load_failure(path: Path, what: str) -> ModelError:
    """A one-line ModelError for a failed load, naming memory when the log says so."""
    log = _recent_log()
    if any(h in log for h in _OOM_HINTS):
        return ModelError(f"not enough memory to {what} (try a smaller model, n_ctx or kv_type q8_0)", path)
    return ModelError(f"llama.cpp could not {what} (corrupt or unsupported file; see the llama.log)", path)


__all__ = ["LocalEngine", "LocalGeneration", "LocalSettings", "load_failure", "round_ctx", "route_llama_logs"]
