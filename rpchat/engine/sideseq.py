"""Generation on a second sequence of the local engine's context, beside the chat.

The chat lives in sequence 0 and its KV cache is what makes the next reply cheap. Work the user does
not wait for (the "story so far" summary) runs in sequence 1 of the same context: same weights, no
second model in memory, and sequence 0 is never touched. The context is built with a unified KV
cache (``kv_unified``) of ``n_ctx + side cells``, so the chat keeps its whole ``n_ctx`` (llama.cpp's
split cache would give each sequence half) and the side sequence has cells of its own.

A side generation holds the engine's lock like a reply, but any reply preempts it: `preempt` (called
when a reply starts) raises the C-level abort flag, so llama.cpp stops within one graph node, the side
job frees its cells and gives the lock back, and the caller may retry later.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol

from rpchat.engine.base import Result, Sampling
from rpchat.engine.textstream import StopFilter, Utf8Pieces
from rpchat.errors import EngineError
from rpchat.prompt.segments import Segment

if TYPE_CHECKING:
    from rpchat.engine.loader import LoadedModel, LocalSettings


class _Generation(Protocol):
    result: Result

    def __iter__(self) -> Iterator[str]: ...

    def close(self) -> None: ...


class SideHost(Protocol):
    """What the side sequence uses of `rpchat.engine.llama.LocalEngine` (which owns one)."""

    @property
    def settings(self) -> LocalSettings: ...

    @property
    def lock(self) -> threading.Lock: ...

    def stream(self, prompt: Sequence[Segment], sampling: Sampling, stop: Sequence[str] = (),
               cancel: threading.Event | None = None) -> _Generation: ...

    def require_loaded(self) -> LoadedModel: ...

SEQ = 1  # the side sequence; the chat is sequence 0
LOCK_POLL_S = 0.05  # how often a side job waiting for the engine checks whether it was preempted


@dataclass
class SideResult:
    """What one side generation did."""

    text: str = ""
    finish_reason: str = "cancelled"  # "eos", "stop", "length", "cancelled" (preempted) or "error"
    prompt_tokens: int = 0
    tokens_generated: int = 0
    seconds: float = 0.0  # from taking the engine's lock to giving it back


class _Job:
    def __init__(self, cancel: threading.Event) -> None:
        self.cancel = cancel
        self.flag: Any = None  # the C abort byte of this job, once it runs


class SideSequence:
    """The side sequence of one `LocalEngine`: at most one job at a time, preempted by any reply."""

    def __init__(self) -> None:
        self.cells = 0  # set when the model is loaded; 0 means the context has no side sequence
        self._job: _Job | None = None
        self._guard = threading.Lock()

    @property
    def available(self) -> bool:
        """Whether the loaded context has room for a side sequence."""
        return self.cells > 0

    def preempt(self) -> None:
        """Stop the running side job now (a reply is about to start); it reports "cancelled"."""
        with self._guard:
            job = self._job
        if job is not None:
            job.cancel.set()
            if job.flag is not None:
                job.flag.value = b"x"

    def prefill(self, engine: SideHost, prompt: Sequence[Segment], cancel: threading.Event | None = None) -> Result:
        """Read ``prompt`` into the chat's own cache (sequence 0) ahead of the next reply, e.g. after the
        summary changed its start. Any reply preempts it; what was read by then stays in the cache."""
        job = _Job(cancel or threading.Event())
        # Starting the stream preempts any other side job; this one registers after, so it is not its own victim.
        generation = engine.stream(prompt, Sampling(temperature=0.0, max_tokens=0), (), job.cancel)
        with self._guard:
            if self._job is not None:
                raise EngineError("a side generation is already running", engine.settings.model_path)
            self._job = job
        try:
            for _ in generation:
                pass
            return generation.result
        finally:
            generation.close()
            with self._guard:
                self._job = None

    def run(
        self,
        engine: SideHost,
        prompt: Sequence[Segment],
        sampling: Sampling,
        stop: Sequence[str] = (),
        cancel: threading.Event | None = None,
    ) -> SideResult:
        """Generate for ``prompt`` in the side sequence; returns when done, preempted or cancelled."""
        job = _Job(cancel or threading.Event())
        with self._guard:
            if self._job is not None:
                raise EngineError("a side generation is already running", engine.settings.model_path)
            self._job = job
        try:
            # Never queue behind a reply: wait for the lock in short steps and give up when preempted.
            while not engine.lock.acquire(timeout=LOCK_POLL_S):
                if job.cancel.is_set():
                    return SideResult()
            try:
                return self._run_locked(engine, job, prompt, sampling, stop)
            finally:
                engine.lock.release()
        finally:
            with self._guard:
                self._job = None

    def _run_locked(
        self, engine: SideHost, job: _Job, prompt: Sequence[Segment], sampling: Sampling, stop: Sequence[str]
    ) -> SideResult:
        from rpchat.engine.sampling import SamplerChain

        t0 = perf_counter()
        result = SideResult()
        model = engine.require_loaded()
        if not self.available:
            raise EngineError("this context has no side sequence", engine.settings.model_path)
        tokens = model.tokenizer.tokenize_prompt(prompt)
        result.prompt_tokens = len(tokens)
        room = self.cells - len(tokens)
        if not tokens or room < 1:
            raise EngineError(
                f"the side prompt has {len(tokens)} tokens but the side sequence holds {self.cells}",
                engine.settings.model_path,
            )
        L, ctx, abort = model.llama_cpp, model.ctx, model.abort
        mem = L.llama_get_memory(ctx)
        abort.arm(ctx)
        with self._guard:
            job.flag = abort.buf
        done = threading.Event()
        abort.watch(job.cancel, done)
        step = max(1, model.batch_cap)
        batch = L.llama_batch_init(step, 0, 1)
        sampler = None
        pieces: list[str] = []
        try:
            for i in range(0, len(tokens), step):
                if job.cancel.is_set() or not _decode(L, ctx, batch, tokens[i : i + step], i,
                                                      last=i + step >= len(tokens)):
                    return result
            sampler = SamplerChain(model.model, ctx, sampling, tokens)
            utf8, stops = Utf8Pieces(), StopFilter(stop)
            known, piece_of = model.tokenizer.pieces, model.tokenizer.piece
            pos, limit = len(tokens), min(max(0, sampling.max_tokens), room)
            result.finish_reason = "length"
            while result.tokens_generated < limit:
                tok = sampler.sample(ctx, -1)
                piece, eog = known.get(tok) or piece_of(tok)
                if eog:
                    result.finish_reason = "eos"
                    break
                result.tokens_generated += 1
                text, hit = stops.feed(utf8.feed(piece))
                pieces.append(text)
                if hit:
                    result.finish_reason = "stop"
                    break
                if job.cancel.is_set() or not _decode(L, ctx, batch, [tok], pos, last=True):
                    result.finish_reason = "cancelled"
                    return result
                pos += 1
            if result.finish_reason != "stop":
                pieces.append(stops.flush())
            result.text = "".join(pieces)
            return result
        finally:
            done.set()
            abort.clear()
            with self._guard:
                job.flag = None
            if sampler is not None:
                sampler.close()
            L.llama_batch_free(batch)
            # The side sequence never keeps anything: the chat may need every cell next.
            L.llama_memory_seq_rm(mem, SEQ, -1, -1)
            result.seconds = perf_counter() - t0


def _decode(llama_cpp: Any, ctx: Any, batch: Any, tokens: Sequence[int], pos: int, *, last: bool) -> bool:
    """Evaluate ``tokens`` at positions ``pos..`` of the side sequence; False when aborted or failed."""
    for j, tok in enumerate(tokens):
        batch.token[j] = tok
        batch.pos[j] = pos + j
        batch.n_seq_id[j] = 1
        batch.seq_id[j][0] = SEQ
        batch.logits[j] = 1 if last and j == len(tokens) - 1 else 0
    batch.n_tokens = len(tokens)
    return int(llama_cpp.llama_decode(ctx, batch)) == 0
