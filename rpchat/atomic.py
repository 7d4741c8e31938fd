"""Crash-safe file writes: a crash at any moment leaves the old file or the new one, never a torn one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder, fsync and rename.

    ``mode`` sets the file's permissions (0o600 for a file holding a secret); None keeps the mode of
    the file being replaced, or the umask default for a new one.

    The temp file's name carries the writer's PID, so temps left by a killed writer are recognised
    (and removed) on the next write to the same file, without touching a live writer's temp.
    """
    write_atomic_chunks(path, [data], mode)


def write_atomic_chunks(path: Path, chunks: Iterable[bytes | memoryview], mode: int | None = None) -> None:
    """`write_atomic` for data in pieces (a large buffer is written without being joined first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _mode_for(path) if mode is None else mode)
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _mode_for(path: Path) -> int:
    # mkstemp makes 0600 files; keep the mode of the file being replaced, else the usual umask default.
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_dir(folder: Path) -> None:
    # The rename itself must reach the disk, or a power cut can bring the old name back.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _writer_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def clean_stale_temps(folder: Path, name: str | None = None) -> int:
    """Remove temp files whose writer is dead (all targets, or only ``name``'s); returns the count.

    Temps without a PID in their name (older rpchat) are removed as well: only a writer that has
    died leaves one behind for long.
    """
    removed = 0
    if not folder.is_dir():
        return 0
    pattern = f".{name}.*.tmp" if name else ".*.tmp"
    for p in folder.glob(pattern):
        parts = p.name.rsplit(".", 3)  # ['.<target>', '<pid>', '<random>', 'tmp']
        pid = int(parts[1]) if len(parts) == 4 and parts[1].isdigit() else None
        if pid is not None and _writer_alive(pid):
            continue
        try:
            p.unlink()
            removed += 1
        except OSError:
            pass
    return removed
