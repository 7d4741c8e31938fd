"""The command palette's rpchat commands: every binding of the current screen, plus a few extras.

Built from the same table as the keys (rpchat.tui.bindings), so nothing is reachable by key only.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from textual.command import DiscoveryHit, Hit, Hits, Provider

from rpchat.tui.bindings import KEYS, KeySpec
from rpchat.tui.host import host_of

# Extra palette-only commands: (scope, title, action, help).
EXTRAS: tuple[tuple[str, str, str, str], ...] = (
    ("chat", "Edit my last message", "edit_last", "Edit the last thing you said, in place"),
    ("chat", "Attach world info…", "attach_world", "Attach a lorebook / SillyTavern world-info JSON to this chat"),
    ("chat", "Detach world info", "detach_world", "Detach a world-info file from this chat"),
    ("chat", "Author's note…", "edit_note", "This chat's author's note: text, depth, every N turns, position"),
    ("chat", "Toggle card lorebook", "toggle_card_lorebook", "Use or ignore the card's own lorebook in this chat"),
    ("chat", "Banned phrases for this chat…", "chat_banned",
     "Phrases the local engine rewrites in this chat, on top of Settings' list"),
    ("chat", "Export this chat…", "export_chat", "Write this chat as a SillyTavern .jsonl file (rpchat chat export)"),
    ("library", "Import a chat for this card…", "import_chat",
     "Copy a SillyTavern .jsonl chat into this card's chats (rpchat chat import)"),
    ("library", "Export a chat of this card…", "export_chat",
     "Write one of this card's chats as a SillyTavern .jsonl file (rpchat chat export)"),
    ("library", "Export this card…", "export_card",
     "Save the card as .png, .json or .charx, converting as needed (rpchat card convert)"),
    ("app", "Reload the model", "app.reload_model", "Load the configured model again"),
    ("app", "Import SillyTavern preset…", "app.import_st_preset",
     "A SillyTavern textgen preset (.json) becomes a sampler preset (pick it in Settings)"),
    ("app", "Import SillyTavern instruct/context template…", "app.import_st_format",
     "SillyTavern instruct and context templates (.json) become a prompt format (pick it in Settings)"),
)


def palette_only() -> list[tuple[str, str, str]]:
    """(scope, title, help) of the commands offered in the palette without a key of their own."""
    return [(scope, title, help_text) for scope, title, _action, help_text in EXTRAS]


def screen_scopes(screen: Any) -> tuple[str, ...]:
    """The binding scopes that apply on ``screen`` (its ``SCOPES`` attribute), plus the app's."""
    return ("app", *getattr(screen, "SCOPES", ()))


class RpchatCommands(Provider):
    """Offers every rpchat action available on the screen the palette was opened from."""

    def _commands(self) -> list[tuple[str, Callable[[], Any], str]]:
        screen = self.screen
        scopes = screen_scopes(screen)
        out: list[tuple[str, Callable[[], Any], str]] = []
        for spec in KEYS:
            if spec.palette and spec.scope in scopes:
                out.append((spec.description, partial(screen.run_action, spec.action), self._help(spec)))
        for scope, title, action, help_text in EXTRAS:
            if scope in scopes:
                out.append((title, partial(screen.run_action, action), help_text))
        return out

    def _help(self, spec: KeySpec) -> str:
        return f"key: {host_of(self.screen).key_for(spec.id)}"

    async def discover(self) -> Hits:
        for title, callback, help_text in self._commands():
            yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, callback, help_text in self._commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)
