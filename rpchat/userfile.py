"""Reading a file a user (or a stranger's download) handed us: bounded, and never blocking.

Every loader of cards, chats, lorebooks and YAML settings reads through `read_capped`, so a FIFO, a
device, a folder or a multi-gigabyte file gives the same clear one-line error everywhere.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

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


def read_json_object(path: Path, cap: int, error: type[RpchatError], what: str,
                     file_what: str = "file") -> dict[str, Any]:
    """A JSON object read through `read_capped`; ``error`` in one line when it is not JSON or not an object.

    ``what`` names what the file should be ("SillyTavern textgen preset") and ``file_what`` the file
    (read_capped's ``what``: "no such preset file").
    """
    data = decode_json(read_capped(path, cap, error, file_what), path, error, what)
    if not isinstance(data, dict):
        raise error(f"not a {what} (expected a JSON object)", path)
    return data


def decode_json(raw: bytes, path: Path, error: type[RpchatError], what: str) -> Any:
    """The JSON value in ``raw`` (UTF-8, a BOM allowed), read from ``path``; ``error`` in one line naming
    ``what`` the file should be when it is not."""
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise error(f"not UTF-8 text (byte {e.start})", path) from None
    except json.JSONDecodeError as e:
        raise error(f"not a JSON {what}: {e.msg} at line {e.lineno}", path) from None
    except RecursionError:
        raise error(f"not a JSON {what}: nested too deeply", path) from None
