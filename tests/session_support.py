"""Helpers shared by the session and TUI tests: an isolated profile, a card file, a config on the tiny model."""

from __future__ import annotations

import json
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


async def wait_for(pilot, condition, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Let the app run until ``condition()`` holds (fails the test when it never does)."""
    steps = int(timeout / 0.02)
    for _ in range(steps):
        if condition():
            return
        await pilot.pause(0.02)
    # Say what the app was showing and telling the user, so a failure explains itself.
    notes = [n.message for n in pilot.app._notifications]
    raise AssertionError(f"condition not reached in time; screen={pilot.app.screen!r}; notifications={notes}")


async def open_chat_from_library(pilot, app, name: str):  # type: ignore[no-untyped-def]
    """Filter the library for ``name``, press Enter, and return the chat screen once it shows."""
    from rpchat.tui.chat import ChatScreen

    await wait_for(pilot, lambda: type(app.screen).__name__ == "LibraryScreen")
    await pilot.press(*name)
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
    await pilot.pause()
    return app.screen


LORE = "The Gull Island lighthouse was built in 1887 from drowned ships' timber."
CARD_LORE = "Marisol's cat is called Barnacle."


def write_world(path: Path, *, key: str = "lighthouse", content: str = LORE, name: str = "Gull Island") -> Path:
    """A SillyTavern world-info file as ST itself writes it (entries keyed by uid)."""
    data = {
        "name": name,
        "entries": {
            "0": {
                "uid": 0, "key": [key], "keysecondary": [], "comment": "the lighthouse", "content": content,
                "constant": False, "selective": True, "selectiveLogic": 0, "order": 100, "position": 0,
                "disable": False, "excludeRecursion": False, "probability": 100, "useProbability": True,
            },
            "1": {
                "uid": 1, "key": ["kraken"], "keysecondary": [], "comment": "never fires here",
                "content": "A kraken sleeps under the reef.", "constant": False, "order": 100, "position": 0,
                "disable": False,
            },
        },
    }
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path
