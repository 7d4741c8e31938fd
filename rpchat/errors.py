"""The one error family rpchat shows to users.

Every failure caused by bad input (a file, a server, a setting) is raised as an `RpchatError`
subclass whose message is one line naming the thing and the problem, for example
``cards/x.png: bad CRC in chunk tEXt``. The CLI prints it as ``rpchat: error: ...`` and the TUI
as a notification; nothing else ever reaches the user.
"""

from __future__ import annotations

from pathlib import Path


def _one_line(text: str) -> str:
    # Names and problems may quote hostile input (a file name with a newline or ESC): keep one inert line.
    # A server may echo the API key back in its error text: it never reaches the user.
    from rpchat.secret import redact
    from rpchat.text import strip_controls

    return " ".join(strip_controls(redact(text).replace("\n", " ").replace("\r", " ")).split())


class RpchatError(Exception):
    """A user-facing error: one line, naming the file (or URL) and the problem."""

    def __init__(self, problem: str, source: str | Path | None = None) -> None:
        self.problem = _one_line(str(problem))
        self.source = _one_line(str(source)) if source is not None else None
        super().__init__(f"{self.source}: {self.problem}" if self.source else self.problem)


class CardError(RpchatError):
    """A character card cannot be read or written."""


class ChatError(RpchatError):
    """A chat file cannot be read or written."""


class ConfigError(RpchatError):
    """A config, persona, preset, format or theme file is invalid."""


class ModelError(RpchatError):
    """A model file is missing, corrupt or cannot be loaded."""


class EngineError(RpchatError):
    """Generation failed (a dead server, a crashed backend, a bad request)."""
