"""Where rpchat keeps things.

Config, personas, presets and formats live under ``user_config_dir("rpchat")``; chats and cards
under ``user_data_dir("rpchat")``; the assembled demo model and logs under ``user_cache_dir``.
``RPCHAT_HOME`` moves all of them below one folder, so tests and users can isolate a profile.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from rpchat.filenames import safe_name

APP = "rpchat"
PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Paths:
    """The folders of one rpchat profile."""

    config_dir: Path
    data_dir: Path
    cache_dir: Path

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.yaml"

    @property
    def personas_file(self) -> Path:
        return self.config_dir / "personas.yaml"

    @property
    def user_formats_dir(self) -> Path:
        return self.config_dir / "formats"

    @property
    def user_presets_dir(self) -> Path:
        return self.config_dir / "presets"

    @property
    def user_themes_dir(self) -> Path:
        return self.config_dir / "themes"

    @property
    def cards_dir(self) -> Path:
        return self.data_dir / "cards"

    @property
    def chats_dir(self) -> Path:
        return self.data_dir / "chats"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def log_dir(self) -> Path:
        return self.cache_dir / "logs"


def profile() -> Paths:
    """The active profile: under ``$RPCHAT_HOME`` when set, else the platform's user folders."""
    home = os.environ.get("RPCHAT_HOME")
    if home:
        root = Path(home).expanduser()
        return Paths(root / "config", root / "data", root / "cache")
    return Paths(
        Path(platformdirs.user_config_dir(APP)),
        Path(platformdirs.user_data_dir(APP)),
        Path(platformdirs.user_cache_dir(APP)),
    )


def bundled_dir(name: str) -> Path:
    """A folder shipped with rpchat (``cards`` or ``themes``).

    A wheel carries them inside the package as ``rpchat/_bundled/NAME``; a source checkout (and an
    editable install) has them at the repository root.
    """
    inside = PACKAGE_DIR / "_bundled" / name
    if inside.is_dir():
        return inside
    return PACKAGE_DIR.parent / name


def named_chats_dir(name: str, root: Path | None = None) -> Path:
    """The chats folder named after ``name``: a card file's stem (its own chats, as SillyTavern files
    them) or a character's name (chats without a card of their own). ``root`` defaults to the profile's."""
    return (root if root is not None else profile().chats_dir) / safe_name(name)
