"""Character cards: read PNG/JSON/CharX cards into one `Card` type, write them back, keep a library."""

from __future__ import annotations

from rpchat.cards.cardfile import card_bytes, card_format, load_card, save_card
from rpchat.cards.jsoncard import card_from_dict, card_to_dict
from rpchat.cards.library import (
    CardEntry,
    card_files,
    delete_card,
    duplicate_card,
    import_card,
    list_cards,
)
from rpchat.cards.model import Card

__all__ = [
    "Card",
    "CardEntry",
    "card_bytes",
    "card_files",
    "card_format",
    "card_from_dict",
    "card_to_dict",
    "delete_card",
    "duplicate_card",
    "import_card",
    "list_cards",
    "load_card",
    "save_card",
]
