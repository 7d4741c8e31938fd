"""Helpers shared by the session and TUI tests: an isolated profile, a card file, a config on the tiny model."""

from __future__ import annotations

from pathlib import Path

from rpchat.cards import Card, save_card
from rpchat.config import Config, EngineConfig, save_config
from rpchat.paths import profile


def make_card(folder: Path, name: str = "Marisol", **fields: object) -> Path:
    """A PNG card with a greeting and one alternate greeting, written to ``folder``."""
    card = Card(
        name=name,
        description=fields.pop("description", "{{char}} keeps the lighthouse on Gull Island."),  # type: ignore[arg-type]
        scenario=fields.pop("scenario", "{{user}} washes ashore."),  # type: ignore[arg-type]
        first_mes=fields.pop("first_mes", '*throws a blanket over {{user}}.* "Up you get."'),  # type: ignore[arg-type]
        alternate_greetings=fields.pop("alternate_greetings", ['"Another one from the sea," she sighs.']),  # type: ignore[arg-type]
        tags=fields.pop("tags", ["island", "slice of life"]),  # type: ignore[arg-type]
        creator_notes=fields.pop("creator_notes", "A calm lighthouse keeper."),  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
    )
    path = folder / f"{name.lower()}.png"
    save_card(card, path)
    return path


def tiny_config(model: Path, *, max_new: int = 12, preset: str = "deterministic") -> Config:
    """A config that runs the tiny test model, greedy, with short replies."""
    return Config(engine=EngineConfig(model=str(model), n_ctx=1024, n_threads=1), preset=preset,
                  max_new_tokens=max_new, default_length="medium")


def write_profile_config(config: Config) -> None:
    """Save ``config`` into the active (RPCHAT_HOME) profile."""
    save_config(profile(), config)
