"""Loading a GGUF model and its context for `LocalEngine`, with one-line errors for every failure."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rpchat.engine.base import EngineInfo, ProgressCallback
from rpchat.engine.gguf_info import read_gguf_info
from rpchat.engine.llama import (
    _SPECIAL_ATTRS,
    KV_TYPES,
    default_threads,
    load_failure,
    round_ctx,
    route_llama_logs,
)
from rpchat.errors import ModelError

if TYPE_CHECKING:
    from rpchat.engine.llama import LocalEngine, _AbortFlag

_FLOAT_TYPES = {"F32", "F16", "BF16"}  # repacking (and its AMX kernels) only touches quantized weights


def load(engine: LocalEngine, progress: ProgressCallback | None) -> None:
    """Fill ``engine``'s model, context and vocabulary fields, or raise ModelError."""
    import llama_cpp

    s = engine.settings
    path = Path(s.model_path).expanduser()
    if not path.exists():
        raise ModelError("model file not found", path)
    if not path.is_file():
        raise ModelError("is not a file", path)
    meta = read_gguf_info(path)  # rejects foreign and corrupt headers before llama.cpp sees them
    route_llama_logs()

    notice = None
    use_extra = s.use_extra_bufts
    if use_extra is None:
        if meta.quantization in _FLOAT_TYPES:
            use_extra = True
        else:
            from rpchat.engine.preflight import repack_verdict

            verdict = repack_verdict()
            use_extra, notice = verdict.use_extra_bufts, verdict.notice

    offload = bool(llama_cpp.llama_supports_gpu_offload())
    n_gpu = s.n_gpu_layers if s.n_gpu_layers is not None else (-1 if offload else 0)
    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = n_gpu if offload else 0
    mparams.use_extra_bufts = bool(use_extra)
    if progress is not None:
        progress(0.0, _reading_stage(meta.size_bytes, meta.block_count, n_gpu if offload else 0))
    callback = None
    if progress is not None:

        def on_progress(value: float, _user: Any) -> bool:
            try:
                progress(0.9 * float(value))  # the context and the warm-up take the rest
            except Exception:  # noqa: BLE001, S110 - a broken progress display must not abort the load
                pass
            return True

        callback = llama_cpp.llama_progress_callback(on_progress)
        mparams.progress_callback = callback
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
    if not model:
        raise load_failure(path, "load the model")

    try:
        n_ctx = round_ctx(s.n_ctx)
        train = int(llama_cpp.llama_model_n_ctx_train(model))
        if train > 0:
            n_ctx = min(n_ctx, round_ctx(train))
        cparams = llama_cpp.llama_context_default_params()
        from rpchat.engine.sideseq import side_cells

        side = side_cells(s, n_ctx)
        cparams.n_ctx = n_ctx + side
        if side:  # one KV cache for both sequences, so the chat keeps its whole n_ctx
            cparams.n_seq_max, cparams.kv_unified = 2, True
        cparams.n_batch = max(1, int(s.n_batch))
        cparams.n_ubatch = prompt_micro_batch(cparams.n_batch, meta.parameter_count or 2 * meta.size_bytes,
                                              meta.block_count or 0, gpu=bool(offload and n_gpu != 0))
        threads = s.n_threads or default_threads()
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        kv = KV_TYPES.get(s.kv_type.lower())
        if kv is None:
            raise ModelError(f"unknown kv_type {s.kv_type!r} (use one of {', '.join(KV_TYPES)})", path)
        flash = s.flash_attn
        if flash is None:
            cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        else:
            cparams.flash_attn_type = (
                llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
        cparams.type_k = kv
        # A quantized V cache needs flash attention; without it only K is quantized.
        cparams.type_v = kv if (flash is not False or kv in (0, 1, 30)) else 1
        if kv not in (0, 1, 30) and flash is None:
            cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        cparams.swa_full = True  # sliding-window models keep every cell, so prefix reuse stays exact
        cparams.no_perf = True
        if progress is not None:
            progress(0.95, f"creating a {n_ctx:,}-token context")
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            raise load_failure(path, f"create a context of {n_ctx} tokens")
    except BaseException:
        llama_cpp.llama_model_free(model)
        raise

    engine._model, engine._ctx = model, ctx
    try:
        _finish(engine, llama_cpp, path, meta.name, n_ctx, n_gpu, offload, notice, progress)
    except BaseException:
        engine._free()
        raise
    if progress is not None:
        progress(1.0)


def _finish(
    engine: LocalEngine,
    llama_cpp: Any,
    path: Path,
    name: str,
    n_ctx: int,
    n_gpu: int,
    offload: bool,
    notice: str | None,
    progress: ProgressCallback | None = None,
) -> None:
    s = engine.settings
    model, ctx = engine._model, engine._ctx
    if s.lora_path is not None:
        lora_path = Path(s.lora_path).expanduser()
        if not lora_path.is_file():
            raise ModelError("LoRA adapter file not found", lora_path)
        adapter = llama_cpp.llama_adapter_lora_init(model, str(lora_path).encode())
        if not adapter:
            raise ModelError("llama.cpp could not load this LoRA adapter for the model", lora_path)
        engine._lora = adapter
        arr = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
        scales = (ctypes.c_float * 1)(s.lora_scale)
        if llama_cpp.llama_set_adapters_lora(ctx, arr, 1, scales) != 0:
            raise ModelError("the LoRA adapter does not fit this model", lora_path)

    engine._vocab = llama_cpp.llama_model_get_vocab(model)
    engine._bos = int(llama_cpp.llama_vocab_bos(engine._vocab))
    engine._add_bos = bool(llama_cpp.llama_vocab_get_add_bos(engine._vocab))
    engine._n_ctx = min(n_ctx, int(llama_cpp.llama_n_ctx(ctx)))
    engine.side.cells = int(llama_cpp.llama_n_ctx(ctx)) - engine._n_ctx if s.side_ctx > 0 else 0
    engine._batch_cap = int(llama_cpp.llama_n_batch(ctx))
    engine._can_shift = bool(llama_cpp.llama_memory_can_shift(llama_cpp.llama_get_memory(ctx)))
    engine._cache = []
    engine._pieces = {}
    engine._special_re, engine._special_ids, engine._special_indexed = None, {}, False
    from rpchat.engine.llama import _AbortFlag

    engine._abort = _AbortFlag(llama_cpp, ctx)
    if progress is not None:
        progress(0.97, "warming up: one pass over every weight")
    engine._graph_nodes = _warm_up(llama_cpp, ctx, max(engine._bos, 0), engine._abort)
    n_layer = int(llama_cpp.llama_model_n_layer(model))
    gpu_layers = 0 if not offload else (n_layer if n_gpu < 0 else min(n_gpu, n_layer))
    from rpchat.engine.diagnostics import backend_label

    engine._info = EngineInfo(
        model_name=name,
        backend=backend_label(gpu_layers),
        n_ctx=engine._n_ctx,
        gpu_layers=gpu_layers,
        total_layers=n_layer,
        notice=notice,
    )


def _reading_stage(size: int, layers: int | None, n_gpu: int) -> str:
    """``reading 4.1 GB``, then ``, offloading 20 layers`` (or all of them) when a GPU takes some."""
    line = f"reading {size / 1e9:.1f} GB" if size >= 1e8 else f"reading {size / 1e6:.0f} MB"
    if n_gpu < 0 or (layers is not None and n_gpu >= layers):
        return line + ", offloading all layers"
    return line + f", offloading {n_gpu} layers" if n_gpu else line


def _warm_up(llama_cpp: Any, ctx: Any, token: int, abort: _AbortFlag) -> int:
    """One throwaway decode that touches every weight (as llama.cpp's own tools do at start), so
    the memory-mapped model is paged in during loading rather than during the first reply.

    Returns the graph nodes it computed: every later decode computes as many, whatever its size,
    which is what prompt progress inside a chunk is measured in."""
    llama_cpp.llama_set_warmup(ctx, True)
    abort.count_nodes(ctx, None)
    try:
        arr = (llama_cpp.llama_token * 1)(token)
        llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(arr, 1))
    finally:
        abort.attach(ctx)
        llama_cpp.llama_set_warmup(ctx, False)
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        llama_cpp.llama_synchronize(ctx)
    return abort.nodes


def index_special_tokens(engine: LocalEngine, llama_cpp: Any) -> None:
    """Control tokens by text, so template segments can contain them and user text never does."""
    vocab = engine._vocab
    get_attr, get_text = llama_cpp.llama_vocab_get_attr, llama_cpp.llama_vocab_get_text
    found: dict[str, int] = {}
    for tok in range(int(llama_cpp.llama_vocab_n_tokens(vocab))):
        if get_attr(vocab, tok) & _SPECIAL_ATTRS:
            text = (get_text(vocab, tok) or b"").decode("utf-8", "replace")
            if text and text not in found:
                found[text] = tok
    engine._special_ids = found
    engine._special_indexed = True
    if found:
        # Longest first, as llama.cpp matches them.
        alternatives = sorted(found, key=len, reverse=True)
        engine._special_re = re.compile("|".join(re.escape(t) for t in alternatives))
    else:
        engine._special_re = None


__all__ = ["load"]


# One graph node of a micro-batch (the biggest FFN matmul) is what Esc waits for while a prompt is read:
# llama.cpp checks its abort callback between nodes. On a CPU this many FLOPs take some tens of ms.
NODE_FLOP_BUDGET = 32e9


def prompt_micro_batch(n_batch: int, parameter_count: int, block_count: int, *, gpu: bool) -> int:
    """The micro-batch (n_ubatch) for reading prompts: 512 on a GPU; on a CPU the largest power of two
    (64..512) whose biggest matmul stays within `NODE_FLOP_BUDGET`, so Esc stops a 7B prompt in tens of
    ms (measured at Mistral-7B shape on 2 cores: 128 reads as fast as 512 and stops in 16-44 ms, not ~200)."""
    size = 512
    if not gpu and parameter_count > 0 and block_count > 0:
        # A layer's FFN is about two thirds of its weights, in two or three matmuls; 2 FLOPs per weight.
        per_token = 2 * (parameter_count / block_count) / 3
        while size > 64 and size * per_token > NODE_FLOP_BUDGET:
            size //= 2
    return max(1, min(n_batch, size))
