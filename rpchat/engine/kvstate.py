"""Saved chat states: a chat's evaluated prompt (llama.cpp's KV cache) outlives the process.

After a reply, on switching chats and on quit, the sequence state of the local engine is written to
``<cache dir>/kvstates/<key>/<chat>.kvstate`` with the token list it holds. ``<key>`` names
everything that makes a state valid: the model file's identity, the LoRA and its scale, n_ctx, the
KV cache type, flash attention, the offload and the llama.cpp build. Before a prompt is evaluated,
the state whose tokens serve the most of it is read back, and the usual prefix reuse evaluates only
the rest. A file that is truncated, garbled or from another build is ignored with one notice; a
cache folder that cannot be written leaves the chat working without states. The folder is kept
under a disk budget by removing the least recently used states.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import mmap
import os
import struct
import threading
import time
import zlib
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rpchat.atomic import write_atomic_chunks
from rpchat.engine.kvreuse import common_prefix, plan_reuse
from rpchat.engine.loader import LoadedModel

if TYPE_CHECKING:
    from rpchat.engine.remote_slots import SlotStates

MAGIC = b"RPCHATKV"
VERSION = 1
SUFFIX = ".kvstate"
MIN_TOKENS = 32  # a shorter cache is cheaper to evaluate than to read back
MIN_GAIN = 32  # restore only when it spares at least this many tokens over what is in memory
_HEAD = struct.Struct("<8sI")  # magic, header length
_HASHED = 1 << 20  # bytes of a file's start and end hashed for its identity
# The engine runs one sequence (0). Its state is read as "all cells" (-1): for one sequence alone,
# llama.cpp leaves out the cells a sliding-window model masks, and such a state serves only a
# prompt that continues every saved token, which the next turn's prompt seldom does.
ALL_CELLS = -1


def c_buffer(size: int) -> Any:
    """A ``size``-byte C array whose zero pages come from the kernel on first touch.

    ``(c_uint8 * size)()`` zeroes the memory holding the GIL: 80-90 ms for a 44 MiB state on a busy
    machine, a stall of the UI thread while a worker saves or reads a state. Anonymous mmap pages are
    zeroed lazily, as llama.cpp (GIL released) or ``readinto`` fill them.
    """
    return (ctypes.c_uint8 * size).from_buffer(mmap.mmap(-1, max(size, 1)))


def states_dir(cache_dir: Path) -> Path:
    """Where saved states live in a profile."""
    return cache_dir / "kvstates"


@dataclass(frozen=True)
class Snapshot:
    """A sequence state read out of llama.cpp, waiting to be written."""

    chat: str
    tokens: list[int]
    data: Any  # a ctypes byte array


@dataclass(frozen=True)
class Usage:
    """What the saved states take on disk (for `rpchat doctor`)."""

    folder: Path
    files: int
    size: int
    budget: int


def chat_id(path: Path) -> str:
    """A file-name-safe id of a chat file."""
    return hashlib.sha256(str(Path(path).expanduser().resolve()).encode()).hexdigest()[:24]


_identities: dict[tuple[str, int, int], dict[str, Any]] = {}


def file_identity(path: Path) -> dict[str, Any]:
    """Size, mtime and a hash of the first and last MiB: a moved file keeps it, a changed one does not."""
    st = os.stat(path)
    memo = (str(path), st.st_size, st.st_mtime_ns)
    found = _identities.get(memo)
    if found is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            h.update(f.read(_HASHED))
            if st.st_size > 2 * _HASHED:
                f.seek(-_HASHED, os.SEEK_END)
                h.update(f.read(_HASHED))
        found = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h.hexdigest()[:32]}
        _identities[memo] = found
    return found


def build_identity() -> dict[str, Any]:
    """The llama.cpp build: the binding's version, the library file and the CPU/backends it runs on."""
    import llama_cpp
    import llama_cpp.llama_cpp as low

    lib = Path(getattr(getattr(low, "_lib", None), "_name", "") or "")
    info = (llama_cpp.llama_print_system_info() or b"").decode("utf-8", "replace")
    return {
        "llama_cpp": str(getattr(llama_cpp, "__version__", "?")),
        "lib": file_identity(lib) if lib.is_file() else str(lib),
        "system": hashlib.sha256(info.encode()).hexdigest()[:16],
    }


class LoadedEngine(Protocol):
    """What saving a state needs of the local engine: its lock and its loaded model."""

    @property
    def lock(self) -> threading.Lock: ...

    @property
    def loaded(self) -> LoadedModel | None: ...


def engine_key(model: LoadedModel) -> dict[str, Any]:
    """Everything a state's validity depends on, for a loaded model."""
    s = model.settings
    lora = Path(s.lora_path).expanduser() if s.lora_path is not None else None
    return {
        "version": VERSION,
        "model": file_identity(Path(s.model_path).expanduser()),
        "lora": file_identity(lora) if lora is not None else None,
        "lora_scale": s.lora_scale if lora is not None else None,
        "n_ctx": model.n_ctx,
        "kv_type": s.kv_type.lower(),
        "flash_attn": s.flash_attn,
        "gpu_layers": model.info.gpu_layers,
        "build": build_identity(),
    }


class KVStates:
    """The saved states of one local engine. Reads happen under the engine's lock, file writes off it."""

    def __init__(self, folder: Path, budget: int) -> None:
        self.folder = folder
        self.budget = budget
        self.owner: str | None = None  # the chat whose prompt the engine's cache holds
        self.notices: list[str] = []
        self._key: dict[str, Any] | None = None
        self._key_dir: Path | None = None
        self._shift_at: int | None = None
        self._headers: dict[Path, tuple[tuple[int, int], list[int]]] = {}
        self._saved: dict[str, bytes] = {}  # chat -> digest of the tokens last written
        self._bad: set[Path] = set()
        self._off: str | None = None  # why saving stopped (disk full, read-only folder)
        self._io = threading.Lock()

    # --- identity --------------------------------------------------------------------------------
    def prepare(self, model: LoadedModel) -> None:
        """Work out the state key now (the engine calls it when a model is loaded), not during a save."""
        self._prepare(model)

    def _prepare(self, model: LoadedModel) -> Path:
        if self._key_dir is None:
            self._key = engine_key(model)
            digest = hashlib.sha256(json.dumps(self._key, sort_keys=True).encode()).hexdigest()[:20]
            self._key_dir = self.folder / digest
        return self._key_dir

    def _notice(self, text: str) -> None:
        self.notices.append(text)

    def take_notices(self) -> list[str]:
        """Problems met since the last call."""
        out, self.notices = self.notices, []
        return out

    # --- saving ----------------------------------------------------------------------------------
    def claim(self, chat: str) -> None:
        """The next generation on this engine is for ``chat``."""
        self.owner = chat

    def after_plan(self, shifted: bool, cached: int) -> None:
        """Called by the generation once the cache plan is applied (a shift lands at the next decode)."""
        self._shift_at = cached if shifted else None

    def capture(self, engine: LoadedEngine, chat: str) -> Snapshot | None:
        """Read ``chat``'s state out of the engine (a memory copy); None when there is nothing new."""
        import llama_cpp

        if self._off is not None or self.budget <= 0:
            return None
        with engine.lock:
            model = engine.loaded
            if model is None:
                return None
            tokens = list(model.cache.tokens)
            if self.owner != chat or len(tokens) < MIN_TOKENS:
                return None
            if self._shift_at is not None and len(tokens) <= self._shift_at:
                return None  # a context shift not yet applied to the K cache: the state is not final
            digest = _digest(tokens)
            key_dir = self._prepare(model)
            if self._saved.get(chat) == digest and (key_dir / (chat + SUFFIX)).is_file():
                return None
            ctx = model.ctx
            size = int(llama_cpp.llama_state_seq_get_size(ctx, ALL_CELLS))
            if size <= 0 or size > self.budget:
                return None
            data = c_buffer(size)
            n = int(llama_cpp.llama_state_seq_get_data(ctx, data, size, ALL_CELLS))
            if n != size:
                return None
        return Snapshot(chat, tokens, data)

    def write(self, snap: Snapshot) -> Path | None:
        """Write a captured state atomically, then keep the folder under budget; None if not written."""
        key_dir = self._key_dir
        if key_dir is None or self._off is not None:
            return None
        # Native int32: the key's build identity already ties a file to this machine's platform.
        tok_bytes = array("i", snap.tokens).tobytes()
        data = memoryview(snap.data).cast("B")
        crc = zlib.crc32(data, zlib.crc32(tok_bytes))
        header = json.dumps({
            "key": self._key, "chat": snap.chat, "n_tokens": len(snap.tokens), "state_size": len(data),
            "crc32": crc, "saved": time.time(),
        }, sort_keys=True).encode()
        path = key_dir / (snap.chat + SUFFIX)
        with self._io:
            try:
                write_atomic_chunks(path, [_HEAD.pack(MAGIC, len(header)), header, tok_bytes, data])
            except OSError as exc:
                self._off = exc.strerror or str(exc)
                self._notice(f"chat states are not saved ({self._off}: {path.parent}); replies still work")
                return None
            self._saved[snap.chat] = _digest(snap.tokens)
            self._headers.pop(path, None)
            self.evict()
        return path

    def save(self, engine: LoadedEngine, chat: str) -> Path | None:
        """Capture and write ``chat``'s state now; None when nothing was written."""
        snap = self.capture(engine, chat)
        return self.write(snap) if snap is not None else None

    # --- restoring -------------------------------------------------------------------------------
    def restore(self, model: LoadedModel, tokens: list[int], *, shift: bool) -> int:
        """Under the engine's lock, before the cache plan: load the saved state that serves the most
        of ``tokens`` when it beats what is in memory; returns the tokens restored (0 for none).
        ``shift``: a context shift is allowed."""
        if len(tokens) <= MIN_TOKENS + 1:
            return 0
        try:
            key_dir = self._prepare(model)
            files = sorted(key_dir.glob("*" + SUFFIX))
        except OSError:
            return 0
        can_shift = model.cache.can_shift and shift
        best = model.cache.plan(tokens, shift=shift).reused + MIN_GAIN
        choice: tuple[Path, list[int]] | None = None
        for path in files:
            saved = self._tokens_of(path)
            if saved is None or common_prefix(saved, tokens) < MIN_TOKENS:
                continue
            gain = plan_reuse(saved, tokens, can_shift=can_shift).reused
            if gain > best:
                best, choice = gain, (path, saved)
        if choice is None:
            return 0
        path, saved = choice
        try:
            return len(saved) if self._load(model, path, saved) else 0
        except Exception as exc:  # noqa: BLE001 - a state that cannot be used costs an evaluation, never the reply
            model.cache.clear()
            self._reject(path, f"{type(exc).__name__}: {exc}")
            return 0

    def _tokens_of(self, path: Path) -> list[int] | None:
        if path in self._bad:
            return None
        try:
            st = path.stat()
            stamp = (st.st_size, st.st_mtime_ns)
            known = self._headers.get(path)
            if known is not None and known[0] == stamp:
                return known[1]
            with open(path, "rb") as f:
                header, tokens = _read_head(f, st.st_size)
        except OSError:
            return None
        except ValueError as exc:
            self._reject(path, str(exc))
            return None
        if header.get("key") != self._key:
            self._reject(path, "it was saved by another build or with other settings")
            return None
        self._headers[path] = (stamp, tokens)
        return tokens

    def _load(self, model: LoadedModel, path: Path, saved: list[int]) -> bool:
        try:
            # Read straight into a C buffer (no copy holding the GIL: the UI thread keeps running).
            size = path.stat().st_size
            buf = c_buffer(size)
            with open(path, "rb") as f:
                got = f.readinto(buf)
            raw = memoryview(buf).cast("B")
            hlen = _HEAD.unpack_from(raw)[1]
            header = json.loads(bytes(raw[_HEAD.size : _HEAD.size + hlen]))
            start = _HEAD.size + hlen
            tok_end = start + 4 * len(saved)
            state = raw[tok_end:]
            if (got != size or header.get("key") != self._key or len(state) != header.get("state_size")
                    or tok_end > size):
                raise ValueError("it is truncated")
            if zlib.crc32(state, zlib.crc32(raw[start:tok_end])) != header.get("crc32"):
                raise ValueError("its contents do not match their checksum")
        except OSError:
            return False
        except (ValueError, struct.error, UnicodeDecodeError) as exc:
            self._reject(path, str(exc) if isinstance(exc, ValueError) and str(exc).startswith("it") else
                         "it is garbled")
            return False
        llama_cpp = model.llama_cpp
        ctx = model.ctx
        mem = llama_cpp.llama_get_memory(ctx)
        model.cache.clear()
        at = ctypes.cast(ctypes.addressof(buf) + tok_end, ctypes.POINTER(ctypes.c_uint8))
        ok = int(llama_cpp.llama_state_seq_set_data(ctx, at, len(state), ALL_CELLS)) > 0
        if ok and int(llama_cpp.llama_memory_seq_pos_max(mem, 0)) + 1 != len(saved):
            ok = False
        if not ok:
            llama_cpp.llama_memory_clear(mem, True)
            self._reject(path, "llama.cpp could not read it back")
            return False
        model.cache.replace(saved)
        self._shift_at = None
        self._saved[str(header.get("chat", ""))] = _digest(saved)
        try:
            os.utime(path)  # recently used: the last to be evicted
        except OSError:
            pass
        return True

    def _reject(self, path: Path, why: str) -> None:
        self._bad.add(path)
        self._headers.pop(path, None)
        self._notice(f"a saved chat state was ignored and the chat evaluated again: {why} ({path.name})")
        try:
            path.unlink()
        except OSError:
            pass

    # --- the disk budget -------------------------------------------------------------------------
    def evict(self) -> list[Path]:
        """Remove the least recently used states until the folder fits the budget; returns them."""
        entries = _state_files(self.folder)
        total = sum(size for _, size, _ in entries)
        removed: list[Path] = []
        for path, size, _ in sorted(entries, key=lambda e: e[2]):
            if total <= self.budget:
                break
            try:
                path.unlink()
            except OSError:
                continue
            total -= size
            removed.append(path)
            self._headers.pop(path, None)
        return removed


def usage(folder: Path, budget: int) -> Usage:
    """How many states are saved and their total size."""
    entries = _state_files(folder)
    return Usage(folder, len(entries), sum(size for _, size, _ in entries), budget)


def _state_files(folder: Path) -> list[tuple[Path, int, int]]:
    out: list[tuple[Path, int, int]] = []
    try:
        paths = list(folder.glob("*/*" + SUFFIX))
    except OSError:
        return out
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((path, st.st_size, st.st_mtime_ns))
    return out


def _read_head(f: Any, size: int) -> tuple[dict[str, Any], list[int]]:
    head = f.read(_HEAD.size)
    if len(head) < _HEAD.size:
        raise ValueError("it is truncated")
    magic, hlen = _HEAD.unpack(head)
    if magic != MAGIC or hlen > size:
        raise ValueError("it is not an rpchat state file")
    try:
        header = json.loads(f.read(hlen))
        n = int(header["n_tokens"])
        state_size = int(header["state_size"])
    except (ValueError, KeyError, TypeError):
        raise ValueError("it is garbled") from None
    if not isinstance(header, dict) or size != _HEAD.size + hlen + 4 * n + state_size:
        raise ValueError("it is truncated")
    toks = array("i")
    toks.frombytes(f.read(4 * n))
    return header, toks.tolist()


def _digest(tokens: list[int]) -> bytes:
    return hashlib.blake2b(array("i", tokens).tobytes(), digest_size=16).digest()


def attach(engine: Any, cache_dir: Path, budget: int) -> None:
    """Give a local engine saved states (other engines have none)."""
    if hasattr(engine, "kv_states") and budget > 0:
        engine.kv_states = KVStates(states_dir(cache_dir), budget)


def states_of(engine: Any) -> KVStates | SlotStates | None:
    """The saved states of ``engine``: on disk (local), on a llama-server (remote), or None when off."""
    from rpchat.engine.remote_slots import SlotStates

    states = getattr(engine, "kv_states", None)
    return states if isinstance(states, (KVStates, SlotStates)) else None


def save_for(engine: Any, chat_path: Path) -> Path | None:
    """Save the engine's state for the chat at ``chat_path`` when it holds that chat; never raises."""
    states = states_of(engine)
    if states is None:
        return None
    try:
        return states.save(engine, chat_id(chat_path))
    except Exception as exc:  # noqa: BLE001 - a failed save must never cost the chat
        states.notices.append(f"the chat state was not saved: {type(exc).__name__}: {exc}")
        return None


__all__ = ["KVStates", "LoadedEngine", "Snapshot", "Usage", "attach", "chat_id", "engine_key", "save_for", "states_dir",
           "states_of", "usage"]
