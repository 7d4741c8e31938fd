"""User personas: who the user plays. Several are kept in one YAML file; one is the default."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rpchat.atomic import write_atomic
from rpchat.errors import ConfigError
from rpchat.paths import profile
from rpchat.yamlfile import dump_yaml, load_yaml

DEFAULT_NAME = "User"
MAX_NAME_CHARS = 100


@dataclass(frozen=True)
class Persona:
    """A user persona: the name used in the prompt and a description of the user's character."""

    name: str
    description: str = ""


def _check_name(name: Any, source: Path) -> str:
    # The name lands in the prompt as "Name:" and in stop strings, so it must be one clean line.
    if not isinstance(name, str):
        raise ConfigError(f"persona name must be text, not {type(name).__name__}", source)
    clean = name.strip()
    if not clean:
        raise ConfigError("persona name must not be empty", source)
    if len(clean) > MAX_NAME_CHARS:
        raise ConfigError(f"persona name is longer than {MAX_NAME_CHARS} characters", source)
    if any(ch < " " or ch == "\x7f" for ch in clean):
        raise ConfigError(f"persona name {clean[:40]!r} contains a line break or control character", source)
    return clean


@dataclass
class PersonaBook:
    """All personas of a profile, in the order the user keeps them, plus the default's name."""

    personas: list[Persona] = field(default_factory=lambda: [Persona(DEFAULT_NAME)])
    default: str = DEFAULT_NAME
    path: Path | None = None

    # --- storage -------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path | None = None) -> PersonaBook:
        """Read the persona file; a missing file gives a fresh book with the persona "User"."""
        path = path or profile().personas_file
        if not path.exists():
            return cls(path=path)
        data = load_yaml(path)
        if data is None:
            return cls(path=path)
        if not isinstance(data, dict):
            raise ConfigError("top level must be a mapping with 'personas' and 'default'", path)
        unknown = sorted(str(k) for k in data if k not in ("personas", "default"))
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r}", path)
        raw = data.get("personas")
        if not isinstance(raw, list) or not raw:
            raise ConfigError("'personas' must be a non-empty list", path)
        personas: list[Persona] = []
        seen: set[str] = set()
        for i, item in enumerate(raw):
            if not isinstance(item, dict):
                raise ConfigError(f"persona #{i + 1} must be a mapping with name and description", path)
            name = _check_name(item.get("name"), path)
            description = item.get("description", "")
            if description is None:
                description = ""
            if not isinstance(description, str):
                raise ConfigError(f"persona {name!r}: description must be text", path)
            if name.casefold() in seen:
                raise ConfigError(f"persona {name!r} appears twice", path)
            seen.add(name.casefold())
            personas.append(Persona(name, description))
        default = data.get("default", personas[0].name)
        if not isinstance(default, str) or default not in {p.name for p in personas}:
            raise ConfigError(f"default persona {default!r} is not in the list", path)
        return cls(personas=personas, default=default, path=path)

    def save(self, path: Path | None = None) -> None:
        """Write the book atomically (to ``path``, else where it was loaded from, else the profile)."""
        target = path or self.path or profile().personas_file
        data = {
            "default": self.default,
            "personas": [{"name": p.name, "description": p.description} for p in self.personas],
        }
        write_atomic(target, dump_yaml(data))
        self.path = target

    # --- lookups -------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [p.name for p in self.personas]

    def get(self, name: str) -> Persona:
        """The persona called ``name``; ConfigError when there is none."""
        for p in self.personas:
            if p.name == name:
                return p
        raise ConfigError(f"no persona named {name!r}", self._source)

    def find(self, name: str) -> Persona | None:
        """The persona called ``name``, or None."""
        return next((p for p in self.personas if p.name == name), None)

    def default_persona(self) -> Persona:
        """The default persona (the first one if the default was lost)."""
        for p in self.personas:
            if p.name == self.default:
                return p
        return self.personas[0]

    def resolve(self, name: str | None) -> Persona:
        """The persona a chat asked for, falling back to the default when it is unset or gone."""
        if name:
            for p in self.personas:
                if p.name == name:
                    return p
        return self.default_persona()

    # --- changes -------------------------------------------------------------------------------
    def add(self, name: str, description: str = "", *, make_default: bool = False) -> Persona:
        """Add a persona; its name must be new (case-insensitively)."""
        clean = self._new_name(name)
        persona = Persona(clean, _clean_text(description))
        self.personas.append(persona)
        if make_default:
            self.default = clean
        return persona

    def edit(self, name: str, description: str) -> Persona:
        """Replace a persona's description."""
        i = self._index(name)
        persona = Persona(self.personas[i].name, _clean_text(description))
        self.personas[i] = persona
        return persona

    def rename(self, old: str, new: str) -> Persona:
        """Rename a persona, keeping its place and default status."""
        i = self._index(old)
        clean = self._new_name(new, ignore=old)
        persona = Persona(clean, self.personas[i].description)
        self.personas[i] = persona
        if self.default == old:
            self.default = clean
        return persona

    def delete(self, name: str) -> None:
        """Remove a persona; the last one cannot go. Deleting the default makes the first one default."""
        i = self._index(name)
        if len(self.personas) == 1:
            raise ConfigError(f"cannot delete {name!r}: it is the only persona", self._source)
        del self.personas[i]
        if self.default == name:
            self.default = self.personas[0].name

    def set_default(self, name: str) -> None:
        """Make ``name`` the default persona."""
        self.default = self.personas[self._index(name)].name

    # --- internals -----------------------------------------------------------------------------
    @property
    def _source(self) -> Path:
        return self.path or profile().personas_file

    def _index(self, name: str) -> int:
        for i, p in enumerate(self.personas):
            if p.name == name:
                return i
        raise ConfigError(f"no persona named {name!r}", self._source)

    def _new_name(self, name: str, ignore: str | None = None) -> str:
        clean = _check_name(name, self._source)
        for p in self.personas:
            if p.name != ignore and p.name.casefold() == clean.casefold():
                raise ConfigError(f"a persona named {p.name!r} already exists", self._source)
        return clean


def _clean_text(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")
