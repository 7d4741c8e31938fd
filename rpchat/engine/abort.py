"""Cancelling llama.cpp mid-decode: a C-level abort flag that a cancel event is mirrored into."""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Callable
from typing import Any


def _c_strlen() -> Any:
    try:
        libc = ctypes.cdll.msvcrt if sys.platform == "win32" else ctypes.CDLL(None)
        return ctypes.cast(libc.strlen, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None


class AbortFlag:
    """A byte llama.cpp polls between graph nodes. libc's ``strlen`` is the callback: it returns
    non-zero once the flag holds a character, so polling costs nanoseconds and no Python.

    While a prompt is evaluated a Python callback polls the same byte instead (`count_nodes`): it
    also counts the graph nodes done, for progress inside a long chunk, and turns a Ctrl+C that
    arrives mid-chunk into an abort. About a microsecond per node is nothing next to a prompt
    chunk, but would add up per generated token, so generation goes back to ``strlen``.
    """

    def __init__(self, llama_cpp: Any) -> None:
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
        """Lower the flag (the generation is over)."""
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


__all__ = ["AbortFlag"]
