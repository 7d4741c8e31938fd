"""World info attached to chats: the worlds folder, importing a file into it, and a parse cache.

A chat stores only the names of its world files (`Chat.worlds`); the files live in
``<data_dir>/worlds``, copied there on attach, so a chat does not depend on where the original was.
"""

from __future__ import annotations

import threading
from pathlib import Path

from rpchat.atomic import write_atomic
from rpchat.errors import ConfigError, RpchatError
from rpchat.filenames import safe_name, unique_path
from rpchat.paths import profile
from rpchat.prompt.lorebook import MAX_BOOK_BYTES, Lorebook, load_lorebook, lorebook_from_bytes
from rpchat.userfile import read_capped

# Parsed books by (path, mtime_ns, size): a chat builds its prompt on every reply and every measure.
_cache: dict[Path, tuple[tuple[int, int], Lorebook]] = {}
_cache_lock = threading.Lock()


def worlds_dir() -> Path:
    """The folder attached world files are copied into."""
    return profile().data_dir / "worlds"


def import_world(src: Path, folder: Path | None = None) -> str:
    """Validate ``src`` as a lorebook and copy it into the worlds folder; returns the stored file name.

    A broken file raises `ConfigError` and nothing is copied. The same bytes already in the folder
    are reused instead of copied again.
    """
    src = Path(src).expanduser()
    # One read: what is validated is exactly what gets copied.
    raw = read_capped(src, MAX_BOOK_BYTES, ConfigError, "lorebook file")
    book = lorebook_from_bytes(raw, src)
    folder = Path(folder) if folder is not None else worlds_dir()
    existing = _same_file(folder, raw)
    if existing is not None:
        return existing
    stem = safe_name(book.name or src.stem, "world")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        dest = unique_path(folder / f"{stem}.json")
        write_atomic(dest, raw)
    except RpchatError as e:
        raise ConfigError(e.problem, folder) from None
    except OSError as e:
        raise ConfigError(f"cannot write: {e.strerror or type(e).__name__}", folder) from None
    return dest.name


def world_path(name: str, folder: Path | None = None) -> Path:
    """The file behind a stored world name; names that would leave the worlds folder are refused."""
    folder = Path(folder) if folder is not None else worlds_dir()
    # The name comes from a chat file, which may come from anyone: a plain file name only.
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ConfigError("not a world file name", name)
    return folder / name


def load_world(name: str, folder: Path | None = None) -> Lorebook:
    """The parsed lorebook of an attached world, from the cache while the file is unchanged."""
    path = world_path(name, folder)
    try:
        st = path.stat()
    except OSError:
        raise ConfigError("world file is missing", path) from None
    stamp = (st.st_mtime_ns, st.st_size)
    with _cache_lock:
        hit = _cache.get(path)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    book = load_lorebook(path)
    with _cache_lock:
        _cache[path] = (stamp, book)
    return book


def load_worlds(names: list[str], folder: Path | None = None) -> tuple[list[Lorebook], list[str]]:
    """The usable books of ``names`` and a one-line problem for each one that cannot be used."""
    books: list[Lorebook] = []
    problems: list[str] = []
    for name in names:
        try:
            books.append(load_world(name, folder))
        except RpchatError as e:
            problems.append(f"world info left out: {e}")
    return books, problems


def _same_file(folder: Path, raw: bytes) -> str | None:
    try:
        candidates = sorted(p for p in folder.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
    except OSError:
        return None
    for path in candidates:
        try:
            if path.is_file() and not path.is_symlink() and path.stat().st_size == len(raw) \
                    and path.read_bytes() == raw:
                return path.name
        except OSError:
            continue
    return None

