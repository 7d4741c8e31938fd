"""The name an imported file gets: a safe file stem in the user's folder that never hides a built-in.

Presets and prompt formats are named after their file (``Universal-Light.json`` -> ``universal-light``).
The name is all an import gets to choose about where it is written, so it is checked here once.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from rpchat.errors import ConfigError

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# Names Windows will not create as files, whatever the extension.
RESERVED = frozenset(
    {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
)
SHADOW_SUFFIX = "-st"


@dataclass(frozen=True)
class Imported:
    """What an import wrote, and the notes to show the user once."""

    name: str
    path: Path
    notes: tuple[str, ...]


def import_name(wanted: str, builtins: Collection[str], what: str) -> tuple[str, str | None]:
    """A valid user file name for ``wanted``, plus a note when it had to change.

    Anything but letters, digits, ``.``, ``_`` and ``-`` becomes ``-`` (so no path can be formed),
    reserved device names are refused, and a name a built-in ``what`` already uses gets ``-st``
    appended instead of silently replacing the built-in.
    """
    name = re.sub(r"[^a-z0-9._-]+", "-", wanted.strip().lower()).strip("-._")[:64].rstrip("-._")
    if not name or not NAME.match(name):
        raise ConfigError(f"{what} name {wanted[:60]!r} has no letters or digits to keep")
    if name.split(".")[0] in RESERVED:
        raise ConfigError(f"{what} name {name!r} is reserved on Windows; choose another with --name")
    note = None
    if name in builtins:
        shadowed = name
        name = f"{name[: 64 - len(SHADOW_SUFFIX)]}{SHADOW_SUFFIX}"
        note = f"the built-in {what} {shadowed!r} keeps its name; this one is saved as {name!r}"
    return name, note
