"""Loading a GGUF model and its context, with one-line errors for every failure.

`load_model` turns `LocalSettings` into a `LoadedModel`: llama.cpp's model and context with the
tokenizer, the KV cache bookkeeping, the abort flag and what the user is shown about them.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rpchat.engine.abort import AbortFlag
from rpchat.engine.base import EngineInfo, ProgressCallback
from rpchat.engine.diagnostics import backend_label
from rpchat.engine.gguf_info import read_gguf_info
from rpchat.engine.kvcache import KVCache
from rpchat.engine.llama_log import load_failure, route_llama_logs
from rpchat.engine.preflight import repack_verdict
from rpchat.engine.tokenizer import Tokenizer
from rpchat.errors import ModelError

FLASH_ATTN = ("auto", "on", "off")  # auto: llama.cpp decides (on where the backend supports it)
MIN_SIDE_CELLS = 256
KV_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "bf16": 30}
_FLOAT_TYPES = {"F32", "F16", "BF16"}  # repacking (and its AMX kernels) only touches quantized weights


@dataclass(frozen=True)
class LocalSettings:
    """How to run a GGUF model in-process."""

    model_path: Path
    n_ctx: int = 4096  # rounded up to a multiple of 256
    n_threads: int | None = None  # None: the physical core count (best guess)
    n_batch: int = 512  # prompt tokens per llama_decode call (and per cancel check)
    n_gpu_layers: int | None = None  # None: all layers when the build can offload, else 0
    flash_attn: str = "auto"  # one of FLASH_ATTN
    kv_type: str = "f16"
    lora_path: Path | None = None
    lora_scale: float = 1.0
    use_extra_bufts: bool | None = None  # None: decided by the repack preflight
    context_shift: bool = True  # shift the KV cache when the prompt loses a span in the middle
    side_ctx: int = 0  # KV cells for a second sequence beside the chat (summaries); 0: none


def round_ctx(n_ctx: int) -> int:
    """llama-cpp-python wants n_ctx as a multiple of 256."""
    return max(256, -(-int(n_ctx) // 256) * 256)


def default_threads() -> int:
    """Physical cores, guessed: hyperthreads slow token generation down."""
    n = os.cpu_count() or 2
    return max(1, n // 2) if n > 4 else n


@dataclass
class LoadedModel:
    """A model and its context, ready to generate. `free` releases both (the LoRA goes with the model)."""

    llama_cpp: Any = field(repr=False)
    settings: LocalSettings
    path: Path  # the model file, for error messages
    model: Any
    ctx: Any
    tokenizer: Tokenizer
    cache: KVCache
    abort: AbortFlag
    info: EngineInfo
    batch_cap: int  # prompt tokens per llama_decode call
    graph_nodes: int  # graph nodes per micro-batch (counted at warm-up, refined by every prompt chunk)
    lora: Any = None
    side_cells: int = 0  # KV cells of the side sequence (rpchat.engine.sideseq); 0: none

    @property
    def n_ctx(self) -> int:
        return self.info.n_ctx

    def free(self) -> None:
        """Free the context and the model; the object is unusable afterwards."""
        L = self.llama_cpp
        if self.ctx is not None:
            L.llama_free(self.ctx)
            self.ctx = None
        # A LoRA adapter belongs to its model in current llama.cpp: freeing the model frees it.
        self.lora = None
        if self.model is not None:
            L.llama_model_free(self.model)
            self.model = None
        self.cache.tokens.clear()


def side_cells(settings: LocalSettings, n_ctx: int) -> int:
    """KV cells the side sequence gets on top of the chat's ``n_ctx`` (0: no side sequence)."""
    if settings.side_ctx <= 0:
        return 0
    return max(MIN_SIDE_CELLS, -(-int(settings.side_ctx) // 256) * 256)


def load_model(settings: LocalSettings, progress: ProgressCallback | None = None) -> LoadedModel:
    """Load the model and create its context, or raise ModelError naming the file."""
    import llama_cpp

    s = settings
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
        flash = s.flash_attn.lower()
        if flash not in FLASH_ATTN:
            raise ModelError(f"unknown flash_attn {s.flash_attn!r} (use one of {', '.join(FLASH_ATTN)})", path)
        cparams.flash_attn_type = {
            "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
            "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
            "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
        }[flash]
        cparams.type_k = kv
        # A quantized V cache needs flash attention; without it only K is quantized.
        cparams.type_v = kv if (flash != "off" or kv in (0, 1, 30)) else 1
        if kv not in (0, 1, 30) and flash == "auto":
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

    try:
        lora = _apply_lora(llama_cpp, s, model, ctx)
        tokenizer = Tokenizer(llama_cpp, llama_cpp.llama_model_get_vocab(model))
        can_shift = bool(llama_cpp.llama_memory_can_shift(llama_cpp.llama_get_memory(ctx)))
        cache = KVCache(llama_cpp, ctx, can_shift=can_shift)
        abort = AbortFlag(llama_cpp)
        if progress is not None:
            progress(0.97, "warming up: one pass over every weight")
        graph_nodes = _warm_up(llama_cpp, ctx, max(tokenizer.bos, 0), abort)
        n_layer = int(llama_cpp.llama_model_n_layer(model))
        gpu_layers = 0 if not offload else (n_layer if n_gpu < 0 else min(n_gpu, n_layer))
        info = EngineInfo(
            model_name=meta.name,
            backend=backend_label(gpu_layers),
            n_ctx=min(n_ctx, int(llama_cpp.llama_n_ctx(ctx))),
            gpu_layers=gpu_layers,
            total_layers=n_layer,
            notice=notice,
        )
    except BaseException:
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
        raise
    if progress is not None:
        progress(1.0)
    return LoadedModel(llama_cpp, s, path, model, ctx, tokenizer, cache, abort, info,
                       batch_cap=int(llama_cpp.llama_n_batch(ctx)), graph_nodes=graph_nodes, lora=lora,
                       side_cells=max(0, int(llama_cpp.llama_n_ctx(ctx)) - n_ctx) if side else 0)


def _apply_lora(llama_cpp: Any, s: LocalSettings, model: Any, ctx: Any) -> Any:
    """The settings' LoRA adapter loaded and set on ``ctx`` (None without one)."""
    if s.lora_path is None:
        return None
    lora_path = Path(s.lora_path).expanduser()
    if not lora_path.is_file():
        raise ModelError("LoRA adapter file not found", lora_path)
    adapter = llama_cpp.llama_adapter_lora_init(model, str(lora_path).encode())
    if not adapter:
        raise ModelError("llama.cpp could not load this LoRA adapter for the model", lora_path)
    arr = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
    scales = (ctypes.c_float * 1)(s.lora_scale)
    if llama_cpp.llama_set_adapters_lora(ctx, arr, 1, scales) != 0:
        raise ModelError("the LoRA adapter does not fit this model", lora_path)
    return adapter


def _reading_stage(size: int, layers: int | None, n_gpu: int) -> str:
    """``reading 4.1 GB``, then ``, offloading 20 layers`` (or all of them) when a GPU takes some."""
    line = f"reading {size / 1e9:.1f} GB" if size >= 1e8 else f"reading {size / 1e6:.0f} MB"
    if n_gpu < 0 or (layers is not None and n_gpu >= layers):
        return line + ", offloading all layers"
    return line + f", offloading {n_gpu} layers" if n_gpu else line


def _warm_up(llama_cpp: Any, ctx: Any, token: int, abort: AbortFlag) -> int:
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


__all__ = ["KV_TYPES", "LoadedModel", "LocalSettings", "default_threads", "load_model", "prompt_micro_batch",
           "round_ctx"]
