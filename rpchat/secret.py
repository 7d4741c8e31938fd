"""Secrets (API keys) this process holds, and keeping them out of everything it shows or writes.

The remote engine registers the key it sends; every user-facing error line (`RpchatError`), the crash
log and the remote engine's server texts pass through `redact`, so a server that echoes the
``Authorization`` header back cannot make rpchat print or save the key.
"""

from __future__ import annotations

import threading

MASK = "[redacted]"
_MIN_LEN = 4  # shorter "keys" would mask ordinary words
_lock = threading.Lock()
_secrets: set[str] = set()


def remember_secret(value: str | None) -> None:
    """Mask ``value`` in every `redact` from now on (for the life of the process)."""
    if value and len(value) >= _MIN_LEN:
        with _lock:
            _secrets.add(value)


def secrets_held() -> tuple[str, ...]:
    """The registered secrets, longest first (so a key containing another is masked whole)."""
    with _lock:
        return tuple(sorted(_secrets, key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``[redacted]``."""
    for value in secrets_held():
        if value in text:
            text = text.replace(value, MASK)
    return text


class SecretFilter:
    """Masks secrets in text that arrives in pieces, holding back a tail that could start one.

    ``feed`` returns what is safe to show now; ``flush`` returns the held-back rest at the end.
    """

    def __init__(self, secrets: tuple[str, ...] | None = None) -> None:
        self._secrets = secrets_held() if secrets is None else secrets
        self._held = ""

    def feed(self, piece: str) -> str:
        """Add ``piece``; return the text that can no longer be part of a secret."""
        if not self._secrets:
            return piece
        text = self._held + piece
        for value in self._secrets:
            text = text.replace(value, MASK)
        keep = 0
        for value in self._secrets:
            for n in range(min(len(value) - 1, len(text)), keep, -1):
                if text.endswith(value[:n]):
                    keep = n
                    break
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The held-back tail (it did not turn into a secret)."""
        rest, self._held = self._held, ""
        return rest
