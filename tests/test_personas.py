"""Personas: a YAML book of user personas with one default."""

from __future__ import annotations

from pathlib import Path

import pytest

from rpchat.errors import ConfigError
from rpchat.paths import profile
from rpchat.personas import Persona, PersonaBook


def test_fresh_profile_has_user() -> None:
    book = PersonaBook.load()
    assert book.personas == [Persona("User", "")]
    assert book.default_persona() == Persona("User", "")
    assert not profile().personas_file.exists()


def test_round_trip_and_operations() -> None:
    book = PersonaBook.load()
    book.add("Theo", "A sailor.\r\nBrave.")
    book.add("Mira", "A witch.", make_default=True)
    book.edit("Theo", "A sailor who lost his ship.")
    book.rename("Mira", "Mirabel")
    book.save()
    again = PersonaBook.load()
    assert again.names == ["User", "Theo", "Mirabel"]
    assert again.default == "Mirabel"
    assert again.get("Theo").description == "A sailor who lost his ship."
    assert again.default_persona() == Persona("Mirabel", "A witch.")
    again.delete("Mirabel")
    assert again.default == "User"
    again.set_default("Theo")
    again.save()
    assert PersonaBook.load().default_persona().name == "Theo"
    # No temp files left beside the book.
    assert [p.name for p in profile().personas_file.parent.iterdir()] == ["personas.yaml"]


def test_resolve_falls_back_to_default() -> None:
    book = PersonaBook.load()
    book.add("Theo")
    assert book.resolve("Theo").name == "Theo"
    assert book.resolve("Gone").name == "User"
    assert book.resolve(None).name == "User"
    assert book.find("Theo") == Persona("Theo") and book.find("Gone") is None


def test_rules() -> None:
    book = PersonaBook.load()
    book.add("Theo")
    with pytest.raises(ConfigError, match="already exists"):
        book.add("theo")
    with pytest.raises(ConfigError, match="empty"):
        book.add("   ")
    with pytest.raises(ConfigError, match="line break"):
        book.add("Two\nLines")
    with pytest.raises(ConfigError, match="no persona"):
        book.edit("Nobody", "x")
    with pytest.raises(ConfigError, match="already exists"):
        book.rename("Theo", "User")
    book.rename("Theo", "THEO")  # changing only the case of its own name is fine
    book.delete("THEO")
    with pytest.raises(ConfigError, match="only persona"):
        book.delete("User")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("personas: [unclosed\n", "invalid YAML"),
        ("- a list\n", "mapping"),
        ("personas: []\n", "non-empty list"),
        ("personas:\n  - name: A\n  - name: a\n", "twice"),
        ("personas:\n  - name: [1]\n", "must be text"),
        ("personas:\n  - name: A\n    description: 5\n", "description must be text"),
        ("personas:\n  - name: A\ndefault: B\n", "default persona 'B'"),
        ("personas:\n  - name: A\nextra: 1\n", "unknown key"),
        ("personas: !!python/object/apply:os.system ['true']\n", "invalid YAML"),
    ],
)
def test_bad_yaml(text: str, problem: str) -> None:
    path: Path = profile().personas_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        PersonaBook.load()
    assert problem in str(info.value) and str(path) in str(info.value)


def test_empty_file_is_a_fresh_book() -> None:
    path = profile().personas_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    assert PersonaBook.load().names == ["User"]
