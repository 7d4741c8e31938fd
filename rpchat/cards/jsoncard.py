"""Card JSON: V1 (flat), V2, V3 and SillyTavern's hybrid, to and from `Card`.

PNG and CharX cards carry the same JSON, so this module is where every format meets the `Card` type.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rpchat.cards.model import Card
from rpchat.errors import CardError

V1 = "chara_card_v1"
V2 = "chara_card_v2"
V3 = "chara_card_v3"
SPEC_VERSIONS = {V2: "2.0", V3: "3.0"}

# Card JSON nested deeper than this is hostile, not a character.
MAX_DEPTH = 100

V1_FIELDS = ("name", "description", "personality", "scenario", "first_mes", "mes_example")
V2_STRINGS = ("creator_notes", "system_prompt", "post_history_instructions", "creator", "character_version")
V2_FIELDS = (
    *V1_FIELDS,
    "creator_notes",
    "system_prompt",
    "post_history_instructions",
    "alternate_greetings",
    "character_book",
    "tags",
    "creator",
    "character_version",
    "extensions",
)
V3_ONLY = (
    "nickname",
    "creator_notes_multilingual",
    "source",
    "group_only_greetings",
    "assets",
    "creation_date",
    "modification_date",
)
STRING_FIELDS = (*V1_FIELDS, *V2_STRINGS, "nickname")
STRING_LIST_FIELDS = ("alternate_greetings", "tags", "source", "group_only_greetings")
KNOWN_FIELDS = frozenset((*V2_FIELDS, *V3_ONLY))
WRAPPER_KEYS = frozenset(("spec", "spec_version", "data"))
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATES = re.compile("[\ud800-\udfff]")


def parse_json_bytes(raw: bytes, source: str | Path) -> dict[str, Any]:
    """Decode UTF-8 card JSON into a dict, with a one-line `CardError` for every way it can be bad."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CardError(f"card text is not valid UTF-8 (byte {e.start})", source) from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise CardError("card JSON is nested too deep", source) from None
    except ValueError as e:
        raise CardError(f"bad JSON: {_first_line(e)}", source) from None
    if not isinstance(data, dict):
        raise CardError(f"card JSON is a {_type_name(data)}, not an object", source)
    if _depth(data) > MAX_DEPTH:
        raise CardError(f"card JSON is nested deeper than {MAX_DEPTH} levels", source)
    if _SURROGATE_ESCAPE.search(raw):
        data = _replace_surrogates(data)
    result: dict[str, Any] = data
    return result


def card_from_dict(data: dict[str, Any], source: str | Path | None = None) -> Card:
    """Normalize a V1, V2, V3 or hybrid card dict into a `Card`; raises `CardError` on bad fields."""
    if not isinstance(data, dict):
        raise CardError(f"card is a {_type_name(data)}, not an object", source)
    spec = data.get("spec")
    inner = data.get("data")
    if isinstance(inner, dict) and (spec is not None or "name" in inner):
        fields = inner
        card_spec = V3 if isinstance(spec, str) and spec.startswith(V3) else V2
        outer = {k: v for k, v in data.items() if k not in WRAPPER_KEYS and k not in V1_FIELDS}
        unknown = {k: v for k, v in inner.items() if k not in KNOWN_FIELDS}
    else:
        if spec is not None and spec != V1:
            raise CardError(f"card has spec {str(spec)[:40]!r} but no data object", source)
        # A flat V1 card: read any V2/V3 field names found at the top level too.
        fields = data
        card_spec = V1
        outer = {k: v for k, v in data.items() if k not in KNOWN_FIELDS and k != "spec"}
        unknown = {}
        if "creator_notes" not in data and isinstance(data.get("creatorcomment"), str):
            fields = {**data, "creator_notes": data["creatorcomment"]}
    card = Card(name=_name(fields, source), spec=card_spec, outer=outer, unknown=unknown)
    for key in STRING_FIELDS[1:]:
        setattr(card, key, _string(fields, key, source))
    for key in STRING_LIST_FIELDS:
        setattr(card, key, _string_list(fields, key, source))
    card.extensions = _object(fields, "extensions", source)
    card.creator_notes_multilingual = _string_map(fields, "creator_notes_multilingual", source)
    card.character_book = _book(fields.get("character_book"), source)
    card.assets = _assets(fields.get("assets"), source)
    card.creation_date = _timestamp(fields, "creation_date", source)
    card.modification_date = _timestamp(fields, "modification_date", source)
    return card


def card_to_dict(card: Card, spec: str = V3, *, hybrid: bool = False) -> dict[str, Any]:
    """The card as ``{"spec", "spec_version", "data"}`` for V2/V3 (flat for V1).

    ``hybrid`` also puts the V1 fields on top, as SillyTavern writes them, for old readers.
    Top-level keys kept from the source (``card.outer``) always go back on top.
    """
    v1 = {key: getattr(card, key) for key in V1_FIELDS}
    if spec == V1:
        return {**card.outer, **v1}
    if spec not in SPEC_VERSIONS:
        raise CardError(f"unknown card spec {spec!r}", card.name)
    data: dict[str, Any] = {key: getattr(card, key) for key in V2_FIELDS if key != "character_book"}
    if card.character_book is not None:
        data["character_book"] = card.character_book
    defaults = Card(name="")
    for key in V3_ONLY:
        value = getattr(card, key)
        # V3 requires group_only_greetings; the rest are written when set, so V2 output stays V2-shaped
        # but still carries any V3 value the card has.
        if value != getattr(defaults, key) or (spec == V3 and key == "group_only_greetings"):
            data[key] = value
    for key, value in card.unknown.items():
        if key not in data:
            data[key] = value
    top: dict[str, Any] = {k: v for k, v in card.outer.items() if k not in WRAPPER_KEYS}
    if hybrid:
        top.update(v1)
    return {**top, "spec": spec, "spec_version": SPEC_VERSIONS[spec], "data": data}


def dump_json(data: dict[str, Any], source: str | Path, *, indent: int | None = None) -> bytes:
    """Serialize card JSON as UTF-8, raising `CardError` for values JSON cannot hold."""
    try:
        text = json.dumps(
            data,
            ensure_ascii=False,
            indent=indent,
            allow_nan=False,
            separators=None if indent else (",", ":"),
        )
        return text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as e:
        raise CardError(f"card cannot be written as JSON: {_first_line(e)}", source) from None


def _replace_surrogates(value: Any) -> Any:
    # JSON escapes can encode lone UTF-16 surrogates, which are not text: no terminal, file name or
    # tokenizer can take them. They become U+FFFD, as invalid bytes would.
    if isinstance(value, str):
        return _SURROGATES.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _type_name(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__
    )


def _depth(value: Any) -> int:
    # Iterative, so a hostile card cannot exhaust the Python stack here.
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def _name(fields: dict[str, Any], source: str | Path | None) -> str:
    name = fields.get("name")
    if name is None:
        raise CardError("card has no name", source)
    if not isinstance(name, str):
        raise CardError(f"card field 'name' is a {_type_name(name)}, expected text", source)
    if not name.strip():
        raise CardError("card name is empty", source)
    return name


def _string(fields: dict[str, Any], key: str, source: str | Path | None) -> str:
    value = fields.get(key)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    # Some editors write the version as a number; keep it as text rather than refuse the card.
    if key == "character_version" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise CardError(f"card field {key!r} is a {_type_name(value)}, expected text", source)


def _string_list(fields: dict[str, Any], key: str, source: str | Path | None) -> list[str]:
    value = fields.get(key)
    if value is None:
        return []
    if key == "tags" and isinstance(value, str):
        # V1-era cards sometimes store tags as one comma-separated string.
        return [t.strip() for t in value.split(",") if t.strip()]
    if not isinstance(value, list):
        raise CardError(f"card field {key!r} is a {_type_name(value)}, expected a list of text", source)
    for item in value:
        if not isinstance(item, str):
            raise CardError(f"card field {key!r} holds a {_type_name(item)}, expected text", source)
    return list(value)


def _object(fields: dict[str, Any], key: str, source: str | Path | None) -> dict[str, Any]:
    value = fields.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CardError(f"card field {key!r} is a {_type_name(value)}, expected an object", source)
    return value


def _string_map(fields: dict[str, Any], key: str, source: str | Path | None) -> dict[str, str]:
    value = _object(fields, key, source)
    for item in value.values():
        if not isinstance(item, str):
            raise CardError(f"card field {key!r} holds a {_type_name(item)}, expected text", source)
    return value


def _timestamp(fields: dict[str, Any], key: str, source: str | Path | None) -> int | None:
    value = fields.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CardError(f"card field {key!r} is a {_type_name(value)}, expected a number", source)
    return int(value)


def _book(book: Any, source: str | Path | None) -> dict[str, Any] | None:
    if book is None:
        return None
    if not isinstance(book, dict):
        raise CardError(f"card field 'character_book' is a {_type_name(book)}, expected an object", source)
    entries = book.get("entries", [])
    if not isinstance(entries, list):
        raise CardError(f"character_book 'entries' is a {_type_name(entries)}, expected a list", source)
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise CardError(f"character_book entry {i} is a {_type_name(entry)}, expected an object", source)
        for key in ("keys", "secondary_keys"):
            keys = entry.get(key)
            if keys is not None and (not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)):
                raise CardError(f"character_book entry {i} {key!r} is not a list of text", source)
        content = entry.get("content")
        if content is not None and not isinstance(content, str):
            raise CardError(f"character_book entry {i} 'content' is a {_type_name(content)}", source)
    return book


def _assets(assets: Any, source: str | Path | None) -> list[dict[str, Any]]:
    if assets is None:
        return []
    if not isinstance(assets, list):
        raise CardError(f"card field 'assets' is a {_type_name(assets)}, expected a list", source)
    for i, asset in enumerate(assets):
        if not isinstance(asset, dict):
            raise CardError(f"card asset {i} is a {_type_name(asset)}, expected an object", source)
        for key in ("type", "uri", "name", "ext"):
            if key in asset and not isinstance(asset[key], str):
                raise CardError(
                    f"card asset {i} {key!r} is a {_type_name(asset[key])}, expected text", source
                )
    return assets
