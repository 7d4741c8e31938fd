"""JSON cards: V1 flat, V2, V3 and SillyTavern's hybrid; the dict API; bad fields and bad JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpchat.cards import Card, card_from_dict, card_to_dict, load_card, save_card
from rpchat.errors import CardError

DEEP = {"level": {"a": [{"b": {"c": [1, 2.5, None, False, {"d": "\u00e9\U0001f600"}]}}]}}


def write_json(tmp_path: Path, obj, name="card.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(obj), encoding="utf-8")
    return p


def test_v1_flat(tmp_path):
    p = write_json(
        tmp_path,
        {
            "name": "Flat",
            "description": "d",
            "personality": "p",
            "scenario": "s",
            "first_mes": "hi",
            "mes_example": "<START>",
            "creatorcomment": "note",
            "talkativeness": "0.5",
        },
    )
    card = load_card(p)
    assert card.spec == "chara_card_v1"
    assert (card.name, card.description, card.personality, card.scenario) == ("Flat", "d", "p", "s")
    assert card.first_mes == "hi" and card.mes_example == "<START>"
    assert card.creator_notes == "note"
    assert card.outer == {"creatorcomment": "note", "talkativeness": "0.5"}


def test_v2(tmp_path):
    book = {"entries": [{"keys": ["x"], "secondary_keys": ["y"], "content": "lore", "selective": True}]}
    data = {
        "name": "Two",
        "alternate_greetings": ["a", "b"],
        "character_book": book,
        "tags": ["t"],
        "extensions": {"fav": True, "deep": DEEP},
        "creator": "me",
        "character_version": "2",
        "system_prompt": "sys",
        "post_history_instructions": "jb",
    }
    card = load_card(write_json(tmp_path, {"spec": "chara_card_v2", "spec_version": "2.0", "data": data}))
    assert card.spec == "chara_card_v2"
    assert card.greetings == ["", "a", "b"]
    assert card.character_book == book
    assert card.extensions["deep"] == DEEP
    assert (card.system_prompt, card.post_history_instructions, card.creator) == ("sys", "jb", "me")


def test_v3(tmp_path):
    data = {
        "name": "Three",
        "nickname": "Tri",
        "group_only_greetings": ["all of you"],
        "source": ["u"],
        "creator_notes_multilingual": {"fr": "bonjour"},
        "creation_date": 1700000000,
        "modification_date": 1700000001,
        "assets": [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}],
    }
    card = load_card(write_json(tmp_path, {"spec": "chara_card_v3", "spec_version": "3.0", "data": data}))
    assert card.spec == "chara_card_v3"
    assert card.display_name == "Tri" and card.group_only_greetings == ["all of you"]
    assert card.creator_notes_multilingual == {"fr": "bonjour"} and card.source == ["u"]
    assert (card.creation_date, card.modification_date) == (1700000000, 1700000001)
    assert card.assets[0]["uri"] == "ccdefault:"


def test_hybrid_data_wins_over_top_level(tmp_path):
    obj = {
        "name": "Top",
        "description": "old",
        "chat": "Top - 2023",
        "create_date": "2023-1-1",
        "spec": "chara_card_v2",
        "spec_version": "2.0",
        "data": {"name": "Inner", "description": "new"},
    }
    card = load_card(write_json(tmp_path, obj))
    assert (card.name, card.description) == ("Inner", "new")
    assert card.outer == {"chat": "Top - 2023", "create_date": "2023-1-1"}


def test_unknown_data_keys_kept_verbatim():
    obj = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": "U", "risu_thing": DEEP}}
    card = card_from_dict(obj, "mem")
    assert card.unknown == {"risu_thing": DEEP}
    assert card_to_dict(card, "chara_card_v2")["data"]["risu_thing"] == DEEP


def test_card_to_dict_shapes():
    card = Card(name="S", nickname="N", alternate_greetings=["g"])
    v3 = card_to_dict(card)
    assert (v3["spec"], v3["spec_version"]) == ("chara_card_v3", "3.0")
    assert set(v3) == {"spec", "spec_version", "data"}
    assert v3["data"]["group_only_greetings"] == [] and v3["data"]["nickname"] == "N"
    v2 = card_to_dict(card, "chara_card_v2")
    assert (v2["spec"], v2["spec_version"]) == ("chara_card_v2", "2.0")
    assert "group_only_greetings" not in v2["data"]  # V3-only fields appear in V2 output only when set
    assert v2["data"]["nickname"] == "N"
    for key in (
        "name",
        "description",
        "personality",
        "scenario",
        "first_mes",
        "mes_example",
        "creator_notes",
        "system_prompt",
        "post_history_instructions",
        "alternate_greetings",
        "tags",
        "creator",
        "character_version",
        "extensions",
    ):
        assert key in v2["data"]
    hybrid = card_to_dict(card, "chara_card_v2", hybrid=True)
    assert hybrid["name"] == "S" and hybrid["first_mes"] == "" and hybrid["data"]["name"] == "S"
    assert card_to_dict(card, "chara_card_v1") == {
        "name": "S",
        "description": "",
        "personality": "",
        "scenario": "",
        "first_mes": "",
        "mes_example": "",
    }


@pytest.mark.parametrize("spec", ["chara_card_v1", "chara_card_v2", "chara_card_v3"])
def test_dict_round_trip(spec):
    card = Card(
        name="R",
        description="a\r\nb",
        extensions={"deep": DEEP},
        unknown={"k": DEEP},
        alternate_greetings=["x"],
        character_book={"entries": []},
        outer={"fav": False},
    )
    back = card_from_dict(card_to_dict(card, spec), "mem")
    if spec == "chara_card_v1":
        assert (back.name, back.description, back.outer) == ("R", "a\r\nb", {"fav": False})
    else:
        assert dataclasses.replace(back, spec=card.spec) == card


def test_json_file_round_trip_is_hybrid_and_lossless(tmp_path):
    card = Card(
        name="J",
        spec="chara_card_v3",
        nickname="Jay",
        extensions={"deep": DEEP},
        unknown={"odd": [DEEP]},
        outer={"chat": "c"},
        creation_date=5,
        character_book={"name": "B", "entries": [{"keys": ["a"], "content": "b", "extensions": DEEP}]},
    )
    save_card(card, tmp_path / "j.json")
    raw = json.loads((tmp_path / "j.json").read_text(encoding="utf-8"))
    assert raw["spec"] == "chara_card_v3" and raw["name"] == "J" and raw["chat"] == "c"
    assert load_card(tmp_path / "j.json") == card


def test_v2_json_stays_v2(tmp_path):
    card = load_card(write_json(tmp_path, {"spec": "chara_card_v2", "data": {"name": "V"}}))
    save_card(card, tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text())["spec"] == "chara_card_v2"
    assert load_card(tmp_path / "out.json") == card


def test_utf8_bom_and_non_ascii(tmp_path):
    p = tmp_path / "bom.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps({"name": "Ren\u00e9e \u96ea"}, ensure_ascii=False).encode())
    assert load_card(p).name == "Ren\u00e9e \u96ea"


def test_nulls_read_as_empty():
    card = card_from_dict(
        {
            "spec": "chara_card_v2",
            "data": {
                "name": "N",
                "description": None,
                "tags": None,
                "extensions": None,
                "character_book": None,
            },
        }
    )
    assert (card.description, card.tags, card.extensions, card.character_book) == ("", [], {}, None)


def test_markup_and_control_tokens_stay_text():
    text = "[b]x[/b] </s> <|im_end|> \x1b[31m {{char}}"
    assert card_from_dict({"name": "M", "first_mes": text}).first_mes == text


# --- bad input -------------------------------------------------------------------------------------


def bad(tmp_path, obj_or_bytes, pattern) -> None:
    p = tmp_path / "bad.json"
    if isinstance(obj_or_bytes, bytes):
        p.write_bytes(obj_or_bytes)
    else:
        p.write_text(json.dumps(obj_or_bytes))
    with pytest.raises(CardError, match=pattern) as info:
        load_card(p)
    assert str(info.value).startswith(str(p) + ": ") and "\n" not in str(info.value)


def test_bad_json(tmp_path):
    bad(tmp_path, b'{"name": "x", }', "bad JSON")
    bad(tmp_path, b'{"name": NaN}', "bad JSON")


def test_bad_utf8(tmp_path):
    bad(tmp_path, b'{"name": "\xc3\x28"}', "UTF-8")


def test_not_an_object(tmp_path):
    bad(tmp_path, b"[1, 2]", "card JSON is a list, not an object")
    bad(tmp_path, b'"just a string"', "card JSON is a string, not an object")
    bad(tmp_path, b"", "bad JSON")


def test_missing_or_empty_name(tmp_path):
    bad(tmp_path, {"spec": "chara_card_v2", "data": {"description": "no name"}}, "no name")
    bad(tmp_path, {"description": "flat, no name"}, "no name")
    bad(tmp_path, {"name": "   "}, "empty")


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"name": ["a"]}, "'name' is a list"),
        ({"name": 7}, "'name' is a number"),
        ({"name": "x", "alternate_greetings": 3}, "'alternate_greetings' is a number"),
        ({"name": "x", "alternate_greetings": ["ok", 3]}, "'alternate_greetings' holds a number"),
        ({"name": "x", "description": {"a": 1}}, "'description' is a object"),
        ({"name": "x", "first_mes": True}, "'first_mes' is a boolean"),
        ({"name": "x", "extensions": []}, "'extensions' is a list"),
        ({"name": "x", "tags": {"t": 1}}, "'tags' is a object"),
        ({"name": "x", "character_book": "lore"}, "'character_book' is a string"),
        ({"name": "x", "character_book": {"entries": {}}}, "'entries' is a object"),
        ({"name": "x", "character_book": {"entries": [{"keys": "k"}]}}, "entry 0 'keys'"),
        ({"name": "x", "assets": [{"uri": 1}]}, "asset 0 'uri'"),
        ({"name": "x", "creation_date": "yesterday"}, "'creation_date' is a string"),
        ({"name": "x", "creator_notes_multilingual": {"fr": 1}}, "creator_notes_multilingual"),
    ],
)
def test_wrong_types(tmp_path, data, pattern):
    bad(tmp_path, {"spec": "chara_card_v3", "spec_version": "3.0", "data": data}, pattern)


def test_spec_without_data(tmp_path):
    bad(tmp_path, {"spec": "chara_card_v2", "name": "x"}, "no data object")


def test_nested_10000_deep(tmp_path):
    bad(tmp_path, b'{"name": "x", "extensions": ' + b"[" * 10000 + b"]" * 10000 + b"}", "nested")
    bad(tmp_path, b'{"name": "x", "extensions": {"a": ' + b"[" * 150 + b"]" * 150 + b"}}", "nested")


def test_huge_integer(tmp_path):
    bad(tmp_path, b'{"name": "x", "creation_date": ' + b"9" * 5000 + b"}", "bad JSON")


def test_card_from_dict_errors_name_source():
    with pytest.raises(CardError, match=r"^where\.json: card is a list"):
        card_from_dict([], "where.json")  # type: ignore[arg-type]


def test_unserializable_card_raises_card_error(tmp_path):
    with pytest.raises(CardError, match="cannot be written as JSON"):
        save_card(Card(name="x", extensions={"bad": object()}), tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_lone_surrogate_escapes_become_replacement_chars(tmp_path):
    p = tmp_path / "s.json"
    p.write_bytes(b'{"name": "a\\ud800b", "tags": ["\\udfff"], "description": "\\ud83d\\ude00"}')
    card = load_card(p)
    assert (card.name, card.tags, card.description) == ("a\ufffdb", ["\ufffd"], "\U0001f600")
    save_card(card, tmp_path / "out.png")  # and the card can be written again
    assert load_card(tmp_path / "out.png").name == "a\ufffdb"


# --- properties ------------------------------------------------------------------------------------


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
texts = st.text(max_size=40).map(lambda s: "".join(c for c in s if not 0xD800 <= ord(c) <= 0xDFFF))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=texts.filter(lambda s: s.strip()),
    greetings=st.lists(texts, max_size=3),
    extensions=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    unknown=st.dictionaries(
        st.text(max_size=8).filter(lambda k: k not in {"name", "tags"}), json_values, max_size=3
    ),
    spec=st.sampled_from(["chara_card_v2", "chara_card_v3"]),
)
def test_any_card_survives_a_json_file_round_trip(tmp_path, name, greetings, extensions, unknown, spec):
    from rpchat.cards.jsoncard import KNOWN_FIELDS

    unknown = {k: v for k, v in unknown.items() if k not in KNOWN_FIELDS}
    card = Card(name=name, alternate_greetings=greetings, extensions=extensions, unknown=unknown, spec=spec)
    save_card(card, tmp_path / "p.json")
    assert load_card(tmp_path / "p.json") == card


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        json_values,
        st.dictionaries(
            st.sampled_from(["name", "data", "spec", "tags", "alternate_greetings", "character_book"]),
            json_values,
            max_size=5,
        ),
    )
)
def test_arbitrary_json_loads_or_raises_card_error(tmp_path, value):
    p = tmp_path / "any.json"
    p.write_text(json.dumps(value))
    try:
        card = load_card(p)
    except CardError as e:
        assert "\n" not in str(e) and str(e).startswith(str(p))
    else:
        assert isinstance(card.name, str) and card.name.strip()
