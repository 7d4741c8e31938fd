"""The one `Card` type every card format (PNG V1/V2/V3, JSON, CharX) is normalized into."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Card:
    """A character card: the union of the V1, V2 and V3 specs, nothing dropped.

    Unknown keys inside ``data`` are kept in ``unknown`` and unknown ``extensions`` verbatim, so a
    card read and written again loses nothing.
    """

    name: str
    description: str = ""
    personality: str = ""
    scenario: str = ""
    first_mes: str = ""
    mes_example: str = ""
    # V2
    creator_notes: str = ""
    system_prompt: str = ""
    post_history_instructions: str = ""
    alternate_greetings: list[str] = field(default_factory=list)
    character_book: dict[str, Any] | None = None
    tags: list[str] = field(default_factory=list)
    creator: str = ""
    character_version: str = ""
    extensions: dict[str, Any] = field(default_factory=dict)
    # V3
    nickname: str = ""
    creator_notes_multilingual: dict[str, str] = field(default_factory=dict)
    source: list[str] = field(default_factory=list)
    group_only_greetings: list[str] = field(default_factory=list)
    assets: list[dict[str, Any]] = field(default_factory=list)
    creation_date: int | None = None
    modification_date: int | None = None
    # Unknown keys found in ``data``, written back as they came.
    unknown: dict[str, Any] = field(default_factory=dict)
    # The avatar as PNG (or other image) bytes; None when the card has no image.
    avatar: bytes | None = None
    # Keys found next to ``spec``/``data`` at the top level (SillyTavern's ``chat``, ``create_date``,
    # ``fav``...), written back as they came.
    outer: dict[str, Any] = field(default_factory=dict)
    # Other files of a CharX archive (path inside the zip -> bytes), written back to the archive.
    embedded: dict[str, bytes] = field(default_factory=dict)
    # The spec the card was read from: "chara_card_v1", "chara_card_v2" or "chara_card_v3".
    spec: str = "chara_card_v2"

    @property
    def greetings(self) -> list[str]:
        """The greeting swipes: ``first_mes`` then the alternate greetings."""
        return [self.first_mes, *self.alternate_greetings]

    @property
    def display_name(self) -> str:
        """The name the chat uses: the V3 nickname when set, else the name."""
        return self.nickname or self.name
