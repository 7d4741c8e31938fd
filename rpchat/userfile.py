"""Reading a file a user (or a stranger's download) handed us: bounded, and never blocking.

Every loader of cards, chats, lorebooks and YAML settings reads through `read_capped`, so a FIFO, a
device, a folder or a multi-gigabyte file gives the same clear one-line error everywhere.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from rpchat.errors import RpchatError


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n >= 2**20 else f"{n // 1024} KiB"


def read_capped(path: Path, cap: int, error: type[RpchatError], what: str = "file") -> bytes:
    """The bytes of ``path``; ``error`` (naming the path) when it is missing, not a plain file or over ``cap``."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with open(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if stat.S_ISDIR(info.st_mode):
                raise error(f"is a folder, not a {what}", path)
            if not stat.S_ISREG(info.st_mode):
                raise error("not a regular file", path)  # a FIFO or device would block or never end
            if info.st_size > cap:
                raise error(f"file is larger than {_size(cap)}", path)
            data = f.read(cap + 1)
    except FileNotFoundError:
        raise error(f"no such {what}", path) from None
    except IsADirectoryError:
        raise error(f"is a folder, not a {what}", path) from None
    except OSError as e:
        raise error(f"cannot read: {e.strerror or type(e).__name__}", path) from None
    if len(data) > cap:
        raise error(f"file is larger than {_size(cap)}", path)
    return data
