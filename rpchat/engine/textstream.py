"""Turning generated token bytes into safe text pieces: UTF-8 across tokens and stop strings."""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class Utf8Pieces:
    """Decode token pieces incrementally: a character split over two tokens comes out whole."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def pending(self) -> bytes:
        """The bytes of an unfinished character, for `restore` after a rewind."""
        return bytes(self._decoder.getstate()[0])

    def restore(self, pending: bytes) -> None:
        self._decoder.setstate((pending, 0))


class StopFilter:
    """Hold back text that could be the start of a stop string; never emit the stop string itself."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in dict.fromkeys(stops) if s]
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to show now, whether a stop string was hit)."""
        if not self.stops:
            return text, False
        held = self._held + text
        cut = -1
        for stop in self.stops:
            i = held.find(stop)
            if i >= 0 and (cut < 0 or i < cut):
                cut = i
        if cut >= 0:
            self._held = ""
            return held[:cut], True
        keep = 0
        for stop in self.stops:
            # The longest tail of `held` that a stop string starts with must wait for more text.
            for k in range(min(len(stop) - 1, len(held)), keep, -1):
                if held.endswith(stop[:k]):
                    keep = k
                    break
        if keep:
            self._held = held[-keep:]
            return held[:-keep], False
        self._held = ""
        return held, False

    def flush(self) -> str:
        """Text still held back when generation ends for another reason."""
        held, self._held = self._held, ""
        return held
