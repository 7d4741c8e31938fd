"""The local engine: a GGUF model in this process, through llama-cpp-python's low-level API.

`LocalEngine` holds the settings, one lock and, once loaded, a `LoadedModel` (rpchat.engine.loader):
the model, its context, the tokenizer and the KV cache's token list. Each reply tokenizes the prompt
and hands the tokens to `rpchat.engine.generation`, which reuses what the cache already holds,
evaluates the rest in chunks that a cancel can stop, and runs the per-token loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from time import perf_counter

from rpchat.engine import generation
from rpchat.engine.base import EngineInfo, ProgressCallback, PromptProgressCallback, Result, Sampling
from rpchat.engine.kvstate import KVStates
from rpchat.engine.loader import LoadedModel, LocalSettings, load_model, round_ctx
from rpchat.engine.sideseq import SideResult, SideSequence
from rpchat.engine.tokenizer import Tokenizer
from rpchat.errors import EngineError
from rpchat.prompt.segments import Segment


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
        self._loaded: LoadedModel | None = None
        self._info = EngineInfo(Path(settings.model_path).stem, "CPU", round_ctx(settings.n_ctx))
        self.kv_states: KVStates | None = None  # saved chat states on disk (rpchat.engine.kvstate)
        self.side = SideSequence()  # sequence 1, for work beside the chat (rpchat.engine.sideseq)

    # --- Engine protocol ----------------------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        return self.info.n_ctx

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def loaded(self) -> LoadedModel | None:
        """The model and context once `load` has run (None before and after `close`)."""
        return self._loaded

    @property
    def cached_tokens(self) -> list[int]:
        """A copy of the tokens now in the KV cache (for tests and the benchmark)."""
        return list(self._loaded.cache.tokens) if self._loaded is not None else []

    def load(self, progress: ProgressCallback | None = None) -> None:
        """Load the model; raises ModelError naming the file for anything that goes wrong."""
        with self.lock:
            if self._loaded is None:
                self._loaded = load_model(self.settings, progress)
                self._info = self._loaded.info
                self.side.cells = self._loaded.side_cells
                if self.kv_states is not None:  # bench10: the saved states' key once, in the loading thread
                    self.kv_states.prepare(self._loaded)

    def count_tokens(self, text: str) -> int:
        return self._tokenizer().count_tokens(text)

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Tokens of ``text`` (no BOS); ``special`` parses control-token text like ``</s>``."""
        return self._tokenizer().tokenize(text, special=special)

    def tokenize_prompt(self, prompt: Sequence[Segment]) -> list[int]:
        """BOS once, then the prompt; control tokens are recognised in template text only."""
        return self._tokenizer().tokenize_prompt(prompt)

    def stream(
        self,
        prompt: Sequence[Segment],
        sampling: Sampling,
        stop: Sequence[str] = (),
        cancel: threading.Event | None = None,
        progress: PromptProgressCallback | None = None,
    ) -> LocalGeneration:
        """Start a reply; nothing runs until the returned object is iterated."""
        segments = list(prompt)
        return self._start(lambda model: model.tokenizer.tokenize_prompt(segments), sampling, stop, cancel, progress)

    def generate_tokens(
        self,
        tokens: Sequence[int],
        sampling: Sampling,
        stop: Sequence[str] = (),
        cancel: threading.Event | None = None,
        progress: PromptProgressCallback | None = None,
    ) -> LocalGeneration:
        """Like `stream`, for an already tokenized prompt (the benchmark's plain-loop comparison)."""
        ids = [int(t) for t in tokens]
        return self._start(lambda _model: ids, sampling, stop, cancel, progress)

    def generate_aside(
        self, prompt: Sequence[Segment], sampling: Sampling, stop: Sequence[str] = (),
        cancel: threading.Event | None = None,
    ) -> SideResult:
        """Generate on the side sequence, leaving the chat's cache alone; any reply preempts it."""
        return self.side.run(self, prompt, sampling, stop, cancel)

    def _start(
        self,
        tokenize: Callable[[LoadedModel], list[int]],
        sampling: Sampling,
        stop: Sequence[str],
        cancel: threading.Event | None,
        progress: PromptProgressCallback | None,
    ) -> LocalGeneration:
        self.require_loaded()
        self.side.preempt()  # the user never waits for a summary
        stops = tuple(stop)

        def run(result: Result) -> Iterator[str]:
            t0 = perf_counter()
            with self.lock:
                model = self.require_loaded()
                tokens = tokenize(model)
                yield from generation.run(model, tokens, sampling, stops, cancel, result, progress,
                                          states=self.kv_states, context_shift=self.settings.context_shift, t0=t0)

        return LocalGeneration(run)

    def reset_cache(self) -> None:
        """Forget the KV cache, so the next prompt is evaluated in full (the benchmark's cold runs)."""
        with self.lock:
            if self._loaded is not None:
                self._loaded.cache.clear()

    def close(self) -> None:
        with self.lock:
            loaded, self._loaded = self._loaded, None
            self.side.cells = 0
            if loaded is not None:
                loaded.free()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - interpreter shutdown may have torn down ctypes
            pass

    def require_loaded(self) -> LoadedModel:
        if self._loaded is None:
            raise EngineError("the model is not loaded", self.settings.model_path)
        return self._loaded

    def _tokenizer(self) -> Tokenizer:
        return self.require_loaded().tokenizer


__all__ = ["LocalEngine", "LocalGeneration", "LocalSettings"]
