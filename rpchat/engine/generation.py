"""One reply from a `LoadedModel`: reuse the KV cache, evaluate the prompt in chunks, stream tokens.

There is one per-token loop (`_generate`). It is deliberately plain: everything it touches is bound
to a local name first, pieces are cached per token, and the only per-token C calls are the sampler
and ``llama_decode``. Optional components hook into it at fixed points, each behind one
``is not None`` test: today the banned-phrase guard (`rpchat.engine.banned.PhraseGuard`), which is
consulted before sampling and for each sampled token's text.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any

from rpchat.engine.banned import PhraseGuard
from rpchat.engine.base import FinishReason, PromptProgress, PromptProgressCallback, Result, Sampling
from rpchat.engine.kvstate import KVStates
from rpchat.engine.loader import LoadedModel
from rpchat.engine.textstream import StopFilter, Utf8Pieces
from rpchat.errors import EngineError

if TYPE_CHECKING:
    from rpchat.engine.sampling import SamplerChain

# Inside a long prompt chunk (seconds each at 7B on a CPU), progress is reported this often.
PROGRESS_INTERVAL_S = 0.2


def run(
    model: LoadedModel,
    tokens: list[int],
    sampling: Sampling,
    stop: Sequence[str],
    cancel: threading.Event | None,
    result: Result,
    progress: PromptProgressCallback | None = None,
    *,
    states: KVStates | None = None,
    context_shift: bool = True,
    t0: float | None = None,
) -> Iterator[str]:
    """Generate text pieces for the prompt ``tokens`` and fill ``result`` as it goes.

    ``progress`` hears how far the prompt evaluation has got (see `Engine.stream`), ``states`` are
    saved chat states to read back when one serves the prompt better than the cache, and ``t0`` is
    when the request started (for the time to the first token). The caller holds the engine's lock.
    """
    import llama_cpp

    # Imported per reply, not with the engine: numpy and the sampler bindings are only needed here.
    from rpchat.engine.sampling import SamplerChain

    t0 = perf_counter() if t0 is None else t0
    cancel = cancel or threading.Event()
    result.prompt_tokens = len(tokens)
    if not tokens:
        raise EngineError("the prompt is empty", model.path)
    if len(tokens) >= model.n_ctx:
        raise EngineError(f"the prompt has {len(tokens)} tokens but the context holds {model.n_ctx}", model.path)
    done = threading.Event()
    abort = model.abort
    abort.arm(model.ctx)
    abort.watch(cancel, done)
    sampler = None
    guard = None
    emitted: list[str] = []
    result.finish_reason = "cancelled"  # until something else is known
    try:
        if not _evaluate_prompt(model, llama_cpp, tokens, cancel, result, progress, t0, states, context_shift):
            result.ttft_s = perf_counter() - t0
            return
        sampler = SamplerChain(model.model, model.ctx, sampling, tokens)
        max_new = min(max(0, sampling.max_tokens), model.n_ctx - len(tokens))
        if sampling.banned_phrases:
            guard = PhraseGuard(llama_cpp, sampling.banned_phrases, sampler, model.cache, tokens, result)
        for piece in _generate(model, llama_cpp, sampler, guard, max_new, stop, cancel, result, t0):
            emitted.append(piece)
            yield piece
    except EngineError as exc:
        result.finish_reason = "error"
        result.error = exc.problem
        raise
    finally:
        done.set()
        abort.clear()
        if guard is not None:
            guard.close()
        if sampler is not None:
            sampler.close()
        result.text = "".join(emitted)


def _evaluate_prompt(
    model: LoadedModel,
    llama_cpp: Any,
    tokens: list[int],
    cancel: threading.Event,
    result: Result,
    progress: PromptProgressCallback | None,
    t0: float,
    states: KVStates | None,
    context_shift: bool,
) -> bool:
    """Bring the KV cache to hold ``tokens``; False when cancelled (the cache stays consistent)."""
    ctx, cache = model.ctx, model.cache
    restored = states.restore(model, tokens, shift=context_shift) if states is not None else 0
    plan = cache.reuse(tokens, shift=context_shift)
    result.prompt_tokens_reused = len(cache.tokens)
    result.prompt_tokens_restored = min(restored, result.prompt_tokens_reused)
    if states is not None:
        states.after_plan(bool(plan.shifted), len(cache.tokens))

    decode, get_one = llama_cpp.llama_decode, llama_cpp.llama_batch_get_one
    step = max(1, model.batch_cap)
    ubatch = max(1, int(llama_cpp.llama_n_ubatch(ctx)))
    start = len(cache.tokens)
    abort = model.abort
    meter = _PromptMeter(progress, len(tokens) - start, t0, model.graph_nodes) if progress else None
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
                cache.resync(tokens)
                raise KeyboardInterrupt
            if rc == 0:
                cache.tokens.extend(chunk)
                if abort.nodes:
                    model.graph_nodes = abort.nodes // graphs
            else:
                cache.resync(tokens)
            result.prompt_tokens_evaluated = len(cache.tokens) - start
            if meter is not None and rc == 0:
                meter.chunk_done(result.prompt_tokens_evaluated)
            if rc == 2:
                return False
            if rc != 0:
                raise EngineError(f"llama.cpp failed to evaluate the prompt (llama_decode returned {rc})", model.path)
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


def _generate(
    model: LoadedModel,
    llama_cpp: Any,
    sampler: SamplerChain,
    guard: PhraseGuard | None,
    max_new: int,
    stop: Sequence[str],
    cancel: threading.Event,
    result: Result,
    t0: float,
) -> Iterator[str]:
    """The per-token loop: sample, turn the token into text, stream it, decode it into the cache."""
    ctx = model.ctx
    decode = llama_cpp.llama_decode
    buf = (llama_cpp.llama_token * 1)()
    batch = llama_cpp.llama_batch_get_one(buf, 1)
    sample = sampler.sample
    pieces = model.tokenizer.pieces
    piece_of = model.tokenizer.piece
    feed = Utf8Pieces().feed
    stops = StopFilter(stop)
    filtering = bool(stops.stops)
    is_cancelled = cancel.is_set
    cache = model.cache
    append = cache.tokens.append  # `KVCache.tokens` only changes in place
    n = 0
    t_first = 0.0
    finish: FinishReason = "length"
    text: str | None
    while n < max_new:
        if guard is not None:
            guard.before_sample()
        tok = sample(ctx, -1)
        if not t_first:
            t_first = perf_counter()
            result.ttft_s = t_first - t0
        entry = pieces.get(tok) or piece_of(tok)
        if entry[1]:
            finish = "eos"
            break
        if guard is None:
            n += 1
            text = feed(entry[0])
        else:
            # The guard decodes UTF-8 itself and holds back what could still become a banned phrase.
            text = guard.add(tok, entry[0])
            n = guard.n_tokens
            if text is None:  # a phrase was taken back: decode the token before it again, for its logits
                tok = guard.redo
        if text is not None:
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
            cache.resync(cache.tokens + [tok])
            if rc == 2:
                finish = "cancelled"
            elif rc == 1:
                finish = "length"  # no room left in the KV cache
            else:
                result.tokens_generated = n
                raise EngineError(f"llama.cpp failed while generating (llama_decode returned {rc})", model.path)
            break
        append(tok)
    t_end = perf_counter()
    tail = ""
    if finish != "stop":
        tail, hit = stops.feed(guard.rest()) if guard is not None else ("", False)
        if hit:
            finish = "stop"
        else:
            tail += stops.flush()
    result.tokens_generated = n
    result.gen_time_s = t_end - t_first if n else 0.0
    result.finish_reason = finish
    if tail:
        yield tail
