"""Prompt text tagged by origin, so the engine tokenizes user text without special tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SegmentKind = Literal["template", "user"]


@dataclass(frozen=True)
class Segment:
    """A run of prompt text. ``template`` text may contain control tokens; ``user`` text never does:
    anything from a card, persona, chat or model is ``user`` and is tokenized as plain text."""

    text: str
    kind: SegmentKind


def join_text(segments: tuple[Segment, ...] | list[Segment]) -> str:
    """The prompt as one string."""
    return "".join(s.text for s in segments)
