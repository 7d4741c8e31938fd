"""llama.cpp's logs: routed to ``<log dir>/llama.log``, never to the terminal, with the recent lines kept
so a failed load can say why (out of memory or a bad file)."""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path
from typing import Any

from rpchat.errors import ModelError
from rpchat.paths import profile

_OOM_HINTS = ("out of memory", "failed to allocate", "unable to allocate", "cannot allocate", "bad_alloc")

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


def recent_log() -> str:
    """The last lines llama.cpp logged, lower-cased (for telling an out-of-memory failure apart)."""
    return "".join(_log_state["recent"][-32:]).lower()


def load_failure(path: Path, what: str) -> ModelError:
    """A one-line ModelError for a failed load, naming memory when the log says so."""
    log = recent_log()
    if any(h in log for h in _OOM_HINTS):
        return ModelError(f"not enough memory to {what} (try a smaller model, n_ctx or kv_type q8_0)", path)
    return ModelError(f"llama.cpp could not {what} (corrupt or unsupported file; see the llama.log)", path)


__all__ = ["load_failure", "recent_log", "route_llama_logs"]
