"""Facts about the llama.cpp build and this machine, for `rpchat doctor` and the status line."""

from __future__ import annotations

import ctypes
from typing import Any

_DEV_TYPES = {0: "CPU", 1: "GPU", 2: "iGPU", 3: "accelerator"}


def backend_devices() -> list[tuple[str, str, str]]:
    """(name, description, kind) of each ggml backend device this build registered."""
    try:
        from llama_cpp._ggml import libggml
    except Exception:
        return []
    lib: Any = libggml
    try:
        lib.ggml_backend_dev_count.restype = ctypes.c_size_t
        lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        lib.ggml_backend_dev_get.restype = ctypes.c_void_p
        for fn in (lib.ggml_backend_dev_name, lib.ggml_backend_dev_description):
            fn.argtypes = [ctypes.c_void_p]
            fn.restype = ctypes.c_char_p
        lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_dev_type.restype = ctypes.c_int
        out = []
        for i in range(int(lib.ggml_backend_dev_count())):
            dev = lib.ggml_backend_dev_get(i)
            name = (lib.ggml_backend_dev_name(dev) or b"?").decode("utf-8", "replace")
            desc = (lib.ggml_backend_dev_description(dev) or b"").decode("utf-8", "replace")
            out.append((name, desc, _DEV_TYPES.get(int(lib.ggml_backend_dev_type(dev)), "other")))
        return out
    except (AttributeError, OSError):
        return []


def backend_label(gpu_layers: int) -> str:
    """What runs the model: ``CPU``, or the GPU backend's name (CUDA0, Metal...) when layers are offloaded."""
    if gpu_layers <= 0:
        return "CPU"
    for name, _desc, kind in backend_devices():
        if kind in ("GPU", "iGPU", "accelerator"):
            return "".join(ch for ch in name if not ch.isdigit()) or name
    return "GPU"
