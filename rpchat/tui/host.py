"""`Host`: what screens and modals may use of the app, so none of them imports `rpchat.tui.app`.

The app imports the screens; screens see the app only through this protocol (`RpchatApp` implements
it, and mypy checks that in app.py). Screens talk back with these methods or with typed messages
(rpchat.tui.messages); the app never calls a screen's methods by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from rich.style import Style

from rpchat.config import Config
from rpchat.engine.base import Engine, EngineInfo
from rpchat.paths import Paths
from rpchat.personas import PersonaBook
from rpchat.session import RoleplaySession

if TYPE_CHECKING:
    from textual.dom import DOMNode


class Host(Protocol):
    """The app as its screens see it."""

    paths: Paths
    config: Config
    personas: PersonaBook
    engine: Engine | None
    engine_info: EngineInfo | None
    engine_problem: str | None
    engine_state: str  # idle, loading, ready, failed, missing (a reactive screens can watch)
    load_progress: float  # 0.0 .. 1.0 while loading (reactive)
    load_stage: str  # what the engine is doing while it loads (reactive)

    @property
    def keymap(self) -> dict[str, str]: ...

    def key_for(self, binding_id: str) -> str: ...

    def prose_styles(self) -> dict[str, Style]: ...

    def open_chat(self, card_path: Path, chat_path: Path | None = None, *, branch: bool = False) -> None: ...

    def remember_chat(self, session: RoleplaySession) -> None: ...


def host_of(node: DOMNode) -> Host:
    """The app ``node`` runs in, as a `Host` (screens of rpchat only ever run in `RpchatApp`)."""
    return cast("Host", node.app)
