"""One reply from `LocalEngine`: reuse the KV cache, evaluate the prompt in chunks, stream tokens.

The per-token loop is deliberately plain: everything it touches is bound to a local name first,
pieces are cached per token, and the only per-token C calls are the sampler and ``llama_decode``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any

from rpchat.engine.alternatives import LogitsCapture
from rpchat.engine.base import PromptProgress, PromptProgressCallback, Result, Sampling
from rpchat.engine.kvreuse import plan_reuse
from rpchat.engine.textstream import StopFilter, Utf8Pieces
from rpchat.errors import EngineError
from rpchat.prompt.segments import Segment

# Inside a long prompt chunk (seconds each at 7B on a CPU), progress is reported this often.
PROGRESS_INTERVAL_S = 0.2

if TYPE_CHECKING:
    from rpchat.engine.llama import LocalEngine


def run(
    engine: LocalEngine,
    prompt: Sequence[Segment] | Sequence[int],
    sampling: Sampling,
    stop: Sequence[str],
    cancel: threading.Event | None,
    result: Result,
    progress: PromptProgressCallback | None = None,
) -> Iterator[str]:
    """Generate text pieces for ``prompt`` and fill ``result`` as it goes; ``progress`` hears how
    far the prompt evaluation has got (see `Engine.stream`)."""
    import llama_cpp

    t0 = perf_counter()
    cancel = cancel or threading.Event()
    with engine.lock:
        engine._require_loaded()
        if prompt and isinstance(prompt[0], Segment):
            tokens = engine.tokenize_prompt(prompt)  # type: ignore[arg-type]
        else:
            tokens = [int(t) for t in prompt]  # type: ignore[arg-type]
        result.prompt_tokens = len(tokens)
        source = engine.settings.model_path
        if not tokens:
            raise EngineError("the prompt is empty", source)
        if len(tokens) >= engine.n_ctx:
            raise EngineError(
                f"the prompt has {len(tokens)} tokens but the context holds {engine.n_ctx}", source
            )
        done = threading.Event()
        abort = engine._abort
        assert abort is not None  # set by load()
        abort.arm(engine._ctx)
        abort.watch(cancel, done)
        sampler = None
        capture: LogitsCapture | None = None
        emitted: list[str] = []
        result.finish_reason = "cancelled"  # until something else is known
        try:
            if not _evaluate_prompt(engine, llama_cpp, tokens, cancel, result, progress, t0):
                result.ttft_s = perf_counter() - t0
                return
            from rpchat.engine.llama import _make_sampler

            sampler = _make_sampler(engine._model, engine._ctx, sampling, tokens)
            max_new = min(max(0, sampling.max_tokens), engine.n_ctx - len(tokens))
            capture = _capture(engine, llama_cpp, sampling)  # token alternatives
            if sampling.banned_phrases:
                from rpchat.engine import banned

                pieces = banned.generate(engine, llama_cpp, sampler, tokens, max_new, stop, cancel, result, t0,
                                         capture)
            else:
                pieces = _generate(engine, llama_cpp, sampler, max_new, stop, cancel, result, t0, capture)
            for piece in pieces:
                emitted.append(piece)
                yield piece
        except EngineError as exc:
            result.finish_reason = "error"
            result.error = exc.problem
            raise
        finally:
            done.set()
            abort.clear()
            if sampler is not None:
                sampler.close()
            result.text = "".join(emitted)
            if capture is not None:
                result.trace = capture.trace().fit(result.text)


def _capture(engine: LocalEngine, llama_cpp: Any, sampling: Sampling) -> LogitsCapture | None:
    """A recorder of each token's alternatives when ``sampling`` asks for them."""
    if sampling.n_probs <= 0:
        return None
    n_vocab = int(llama_cpp.llama_vocab_n_tokens(engine._vocab))
    return LogitsCapture(llama_cpp, engine._ctx, n_vocab, _piece_lookup(engine),
                         min(sampling.n_probs, 20))


def _piece_lookup(engine: LocalEngine) -> Any:
    pieces, piece_of = engine._pieces, engine._piece
    return lambda tok: pieces.get(tok) or piece_of(tok)


def _evaluate_prompt(
    engine: LocalEngine,
    llama_cpp: Any,
    tokens: list[int],
    cancel: threading.Event,
    result: Result,
    progress: PromptProgressCallback | None,
    t0: float,
) -> bool:
    """Bring the KV cache to hold ``tokens``; False when cancelled (the cache stays consistent)."""
    ctx = engine._ctx
    mem = llama_cpp.llama_get_memory(ctx)
    seq_rm = llama_cpp.llama_memory_seq_rm
    states = engine.kv_states
    restored = states.restore(engine, llama_cpp, tokens) if states is not None else 0
    plan = plan_reuse(engine._cache, tokens, can_shift=engine._can_shift and engine.settings.context_shift)
    if plan.shifted:
        ok = seq_rm(mem, 0, plan.span_end, -1) and seq_rm(mem, 0, plan.keep, plan.span_start)
        if ok:
            llama_cpp.llama_memory_seq_add(
                mem, 0, plan.span_start, plan.span_end, plan.keep - plan.span_start
            )
    else:
        ok = seq_rm(mem, 0, plan.keep, -1)
    if ok:
        engine._cache = tokens[: plan.reused]
    else:  # e.g. recurrent state that cannot be cut: start over
        llama_cpp.llama_memory_clear(mem, True)
        engine._cache = []
    result.prompt_tokens_reused = len(engine._cache)
    result.prompt_tokens_restored = min(restored, result.prompt_tokens_reused)
    if states is not None:
        states.after_plan(bool(plan.shifted), len(engine._cache))

    decode, get_one = llama_cpp.llama_decode, llama_cpp.llama_batch_get_one
    step = max(1, engine._batch_cap)
    ubatch = max(1, int(llama_cpp.llama_n_ubatch(ctx)))
    start = len(engine._cache)
    abort = engine._abort
    assert abort is not None  # set by load()
    meter = _PromptMeter(progress, len(tokens) - start, t0, engine._graph_nodes) if progress else None
    # Python after every graph node: progress inside a long chunk, and Ctrl+C within one node.
    abort.count_nodes(ctx, meter.on_node if meter else None)
    try:
        for i in range(start, len(tokens), step):
            if cancel.is_set():
                return False
            chunk = tokens[i : i + step]
            graphs = -(-len(chunk) // ubatch)
            if meter is not None:
                meter.begin(i - start, len(chunk), graphs)
            abort.nodes = 0
            arr = (llama_cpp.llama_token * len(chunk))(*chunk)
            rc = decode(ctx, get_one(arr, len(chunk)))
            if abort.interrupted:
                _resync(engine, llama_cpp, tokens)
                raise KeyboardInterrupt
            if rc == 0:
                engine._cache.extend(chunk)
                if abort.nodes:
                    engine._graph_nodes = abort.nodes // graphs
            else:
                _resync(engine, llama_cpp, tokens)
            result.prompt_tokens_evaluated = len(engine._cache) - start
            if meter is not None and rc == 0:
                meter.chunk_done(result.prompt_tokens_evaluated)
            if rc == 2:
                return False
            if rc != 0:
                raise EngineError(
                    f"llama.cpp failed to evaluate the prompt (llama_decode returned {rc})",
                    engine.settings.model_path,
                )
    finally:
        abort.attach(ctx)  # back to the C-only flag for the per-token loop
    return not cancel.is_set()


class _PromptMeter:
    """`PromptProgress` reports for one prompt: at the start, after every chunk, and inside a long
    chunk at most every `PROGRESS_INTERVAL_S`, estimated from the share of graph nodes llama.cpp
    has computed (every layer is the same nodes, so nodes track time closely). Never backwards.
    A callback that raises is ignored: a broken display must not break the reply."""

    def __init__(self, report: PromptProgressCallback, total: int, t0: float, graph_nodes: int) -> None:
        self.report, self.total, self.t0, self.graph_nodes = report, total, t0, graph_nodes
        self.done = 0
        self.chunk_start = self.chunk_len = self.chunk_nodes = 0
        self.last = perf_counter()
        self._send(0, self.last)

    def begin(self, done: int, n_tokens: int, graphs: int) -> None:
        self.chunk_start, self.chunk_len = done, n_tokens
        self.chunk_nodes = self.graph_nodes * graphs

    def on_node(self, nodes: int) -> None:
        """Called by llama.cpp (through the abort callback) after each graph node."""
        if not self.chunk_nodes:
            return
        now = perf_counter()
        if now - self.last < PROGRESS_INTERVAL_S:
            return
        inside = min(self.chunk_len - 1, self.chunk_len * nodes // self.chunk_nodes)
        if self.chunk_start + inside > self.done:
            self._send(self.chunk_start + inside, now)

    def chunk_done(self, done: int) -> None:
        self._send(done, perf_counter())

    def _send(self, done: int, now: float) -> None:
        self.done, self.last = done, now
        try:
            self.report(PromptProgress(done, self.total, now - self.t0))
        except Exception:  # noqa: BLE001, S110 - see the class docstring
            pass


def _resync(engine: LocalEngine, llama_cpp: Any, tokens: Sequence[int]) -> None:
    """After an aborted or failed decode, trust the memory's own idea of what it holds."""
    mem = llama_cpp.llama_get_memory(engine._ctx)
    n = int(llama_cpp.llama_memory_seq_pos_max(mem, 0)) + 1
    n = max(0, min(n, len(tokens)))
    llama_cpp.llama_memory_seq_rm(mem, 0, n, -1)
    engine._cache = list(tokens[:n])


def _generate(
    engine: LocalEngine,
    llama_cpp: Any,
    sampler: Any,
    max_new: int,
    stop: Sequence[str],
    cancel: threading.Event,
    result: Result,
    t0: float,
    capture: LogitsCapture | None = None,
) -> Iterator[str]:
    ctx = engine._ctx
    decode = llama_cpp.llama_decode
    buf = (llama_cpp.llama_token * 1)()
    batch = llama_cpp.llama_batch_get_one(buf, 1)
    sample = sampler.sample
    pieces = engine._pieces
    piece_of = engine._piece
    utf8 = Utf8Pieces()
    feed = utf8.feed
    stops = StopFilter(stop)
    filtering = bool(stops.stops)
    is_cancelled = cancel.is_set
    cache = engine._cache
    append = cache.append
    n = 0
    t_first = 0.0
    finish = "length"
    while n < max_new:
        tok = sample(ctx, -1)
        if not n:
            t_first = perf_counter()
            result.ttft_s = t_first - t0
        entry = pieces.get(tok) or piece_of(tok)
        if entry[1]:
            finish = "eos"
            break
        if capture is not None:  # token alternatives: read this position's logits before the next decode
            capture.add(tok)
        n += 1
        text = feed(entry[0])
        if filtering:
            text, hit = stops.feed(text)
            if hit:
                if text:
                    yield text
                finish = "stop"
                break
        if text:
            yield text
        if is_cancelled():
            finish = "cancelled"
            break
        buf[0] = tok
        rc = decode(ctx, batch)
        if rc:
            _resync(engine, llama_cpp, cache + [tok])
            cache = engine._cache
            append = cache.append
            if rc == 2:
                finish = "cancelled"
            elif rc == 1:
                finish = "length"  # no room left in the KV cache
            else:
                result.tokens_generated = n
                raise EngineError(
                    f"llama.cpp failed while generating (llama_decode returned {rc})",
                    engine.settings.model_path,
                )
            break
        append(tok)
    t_end = perf_counter()
    result.tokens_generated = n
    result.gen_time_s = t_end - t_first if n else 0.0
    result.finish_reason = finish  # type: ignore[assignment]
    if finish != "stop":
        tail = stops.flush()
        if tail:
            yield tail
