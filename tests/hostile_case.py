"""One hostile input: a file (made lazily, so 50 MB inputs cost nothing until run) and its loader.

Shared by the generators (`hostile_cards`, `hostile_files`) and the runner (`hostile`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# What a case may end as: "ok" (loads), "error" (the documented error), "any" (either is fine).
EXPECTS = ("ok", "error", "any")


@dataclass(frozen=True)
class Case:
    """A hostile input for one loader ("card", "chat", "preset", "theme", "config", "persona",
    "format", "gguf"): ``content`` makes the bytes, or ``setup`` makes the file (links, FIFOs)."""

    id: str
    target: str
    filename: str
    content: Callable[[], bytes] | None = None
    # "ok", "error", "any", or "salvage": loads what is readable and says which lines were left out.
    expect: str = "any"
    setup: Callable[[Path], Path] | None = None

    def write(self, folder: Path) -> Path:
        """Create the input inside ``folder`` and return the path to hand to the loader."""
        folder.mkdir(parents=True, exist_ok=True)
        if self.setup is not None:
            return self.setup(folder)
        assert self.content is not None
        path = folder / self.filename
        path.write_bytes(self.content())
        return path


def flip_bits(data: bytes, rng: random.Random, count: int = 1, lo: int = 0, hi: int | None = None) -> bytes:
    """``data`` with ``count`` random bits flipped between byte offsets ``lo`` and ``hi``."""
    out = bytearray(data)
    hi = len(out) if hi is None else min(hi, len(out))
    for _ in range(count):
        i = rng.randrange(lo, hi)
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def cut_points(size: int, rng: random.Random, n: int, must: tuple[int, ...] = ()) -> list[int]:
    """``n`` distinct truncation lengths in ``[0, size)``: the ``must`` ones, then spread and random."""
    points: list[int] = []
    for p in (*must, 0, 1, size // 2, size - 1):
        if 0 <= p < size and p not in points:
            points.append(p)
    while len(points) < min(n, size):
        p = rng.randrange(size)
        if p not in points:
            points.append(p)
    return points[:n]


def cases_from(
    prefix: str, target: str, filename: str, items: Iterator[tuple[str, Callable[[], bytes], str]]
) -> Iterator[Case]:
    """Cases from ``(name, content, expect)`` triples, ids ``prefix/name``."""
    for name, make, expect in items:
        yield Case(f"{prefix}/{name}", target, filename, content=make, expect=expect)
