"""Every key binding of every screen and modal, with an id users can remap (``keys: {regenerate: ctrl+r}``).

Screens and modals take their `BINDINGS` from here (``BINDINGS = bindings_for("settings")``), the help
screen (F1) lists this table and the command palette offers the library's and chat's actions, so the
three never disagree. No screen declares a `Binding` of its own.

To add a key: add a `KeySpec` to `KEYS` under its scope (the id is what users write in config.yaml).
To add a screen or modal: pick a new scope name, add its specs, give it a title in `SCOPE_TITLES`
(the F1 heading) and set ``BINDINGS = bindings_for("<scope>")`` on the class. A scope in `SCOPES` of a
screen (library, chat) also offers its actions in the command palette.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from textual.binding import Binding, BindingType


@dataclass(frozen=True)
class KeySpec:
    """One binding: a stable id, its default key(s), the action it runs and where it applies."""

    id: str
    key: str
    action: str
    description: str
    scope: str  # a key of SCOPE_TITLES: "app", "library", "chat", "transcript" (the message cursor), a modal
    show: bool = True  # shown in the footer
    priority: bool = False  # wins over the focused widget (e.g. Esc while typing)
    palette: bool = True  # offered in the command palette


KEYS: tuple[KeySpec, ...] = (
    KeySpec("quit", "ctrl+q", "app.quit", "Quit", "app", priority=True),
    KeySpec("help", "f1", "app.show_help", "Help", "app"),
    KeySpec("settings", "f2", "app.open_settings", "Settings", "app"),
    KeySpec("models", "f8", "app.open_model_picker", "Models", "app", show=False),  # f6/f7: the text box
    # library
    KeySpec("open_card", "enter", "open_card", "Chats", "library", palette=True),
    KeySpec("resume_chat", "ctrl+o", "resume_chat", "Resume last chat", "library"),
    KeySpec("new_chat", "ctrl+n", "new_chat", "New chat", "library"),
    KeySpec("import_card", "ctrl+t", "import_card", "Import card", "library"),
    KeySpec("new_card", "ctrl+a", "new_card", "New card", "library"),
    KeySpec("duplicate_card", "ctrl+d", "duplicate_card", "Duplicate card", "library"),
    KeySpec("delete_card", "ctrl+x", "delete_card", "Delete card", "library"),
    KeySpec("edit_card", "ctrl+e", "edit_card", "Edit card", "library"),
    KeySpec("filter", "ctrl+f", "focus_filter", "Filter", "library", show=False),
    KeySpec("card_up", "up", "move(-1)", "Previous card", "library", show=False, palette=False),
    KeySpec("card_down", "down", "move(1)", "Next card", "library", show=False, palette=False),
    # chat
    KeySpec("stop", "escape", "stop", "Stop", "chat", priority=True),
    KeySpec("regenerate", "ctrl+r", "regenerate", "Regenerate", "chat"),
    KeySpec("swipe_left", "alt+left", "swipe(-1)", "Swipe left", "chat", show=False),
    KeySpec("swipe_right", "alt+right", "swipe(1)", "Swipe right", "chat", show=False),
    KeySpec("continue", "ctrl+g", "continue_reply", "Continue", "chat"),
    KeySpec("impersonate", "ctrl+t", "impersonate", "Impersonate", "chat"),
    KeySpec("length", "ctrl+l", "cycle_length", "Length", "chat"),
    KeySpec("messages", "ctrl+up", "focus_transcript", "Messages", "chat", show=False),
    KeySpec("persona", "f3", "edit_persona", "Persona/scenario", "chat", show=False),
    KeySpec("chat_card", "f4", "edit_card", "Edit card", "chat", show=False),
    KeySpec("inspect", "f5", "inspect_prompt", "Prompt inspector", "chat", show=False),
    KeySpec("back", "ctrl+b", "back", "Library", "chat"),
    # the message cursor (transcript focused)
    KeySpec("turn_up", "up,k", "cursor(-1)", "Previous turn", "transcript", show=False, palette=False),
    KeySpec("turn_down", "down,j", "cursor(1)", "Next turn", "transcript", show=False, palette=False),
    KeySpec("turn_edit", "e,enter", "edit_turn", "Edit turn", "transcript"),
    KeySpec("turn_delete", "delete,d", "delete_turn", "Delete turn", "transcript"),
    KeySpec("turn_branch", "b", "branch_turn", "Branch here", "transcript"),
    KeySpec("turn_copy", "c,y", "copy_turn", "Copy turn", "transcript"),
    KeySpec("turn_hide", "h", "hide_turn", "Hide/unhide turn", "transcript"),
    KeySpec("turn_swipe_left", "left", "swipe(-1)", "Swipe left", "transcript", show=False, palette=False),
    KeySpec("turn_swipe_right", "right", "swipe(1)", "Swipe right", "transcript", show=False, palette=False),
    KeySpec("turn_input", "i,tab", "focus_input", "Write", "transcript", palette=False),
    # the box editing a turn in place (Enter also saves and Shift+Enter makes a newline, as in the input)
    KeySpec("edit.save", "enter", "save", "Save edit", "edit", palette=False),
    KeySpec("edit.cancel", "escape", "cancel", "Cancel edit", "edit", palette=False),
    # modals: not in the palette (it lists the screen below's actions)
    KeySpec("chats.close", "escape", "cancel", "Close", "chats", palette=False),
    KeySpec("chats.branch", "b", "branch", "Branch selected", "chats", palette=False),
    KeySpec("chats.new", "n", "new", "New chat", "chats", palette=False),
    KeySpec("chats.export", "x", "export", "Export selected", "chats", palette=False),
    KeySpec("card.save", "ctrl+s", "save", "Save", "card_editor", palette=False),
    KeySpec("card.cancel", "escape", "cancel", "Close", "card_editor", palette=False),
    KeySpec("persona.apply", "ctrl+s", "apply", "Apply", "persona_editor", palette=False),
    KeySpec("persona.cancel", "escape", "cancel", "Cancel", "persona_editor", palette=False),
    KeySpec("persona.new", "ctrl+n", "new_persona", "New persona", "persona_editor", palette=False),
    KeySpec("note.save", "ctrl+s", "save", "Save", "note", palette=False),
    KeySpec("note.cancel", "escape", "cancel", "Cancel", "note", palette=False),
    KeySpec("inspector.close", "escape", "close", "Close", "inspector", palette=False),
    KeySpec("inspector.toggle", "t", "toggle_view", "Template view", "inspector", palette=False),
    KeySpec("inspector.copy", "c", "copy", "Copy prompt", "inspector", palette=False),
    KeySpec("settings.save", "ctrl+s", "save", "Save", "settings", palette=False),
    KeySpec("settings.cancel", "escape", "cancel", "Cancel", "settings", palette=False),
    KeySpec("picker.close", "escape", "close", "Close", "picker", palette=False),
    KeySpec("picker.rescan", "ctrl+r", "rescan", "Rescan", "picker", palette=False),
    KeySpec("dialog.cancel", "escape", "answer(False)", "Cancel", "confirm", palette=False),
    KeySpec("dialog.yes", "y", "answer(True)", "Yes", "confirm", show=False, palette=False),
    KeySpec("dialog.no", "n", "answer(False)", "No", "confirm", show=False, palette=False),
    # As in most dialogs, the arrows move between the buttons (Tab still does too).
    KeySpec("dialog.left", "left", "move_button(-1)", "Button to the left", "confirm", show=False, palette=False),
    KeySpec("dialog.right", "right", "move_button(1)", "Button to the right", "confirm", show=False,
            palette=False),
    KeySpec("prompt.cancel", "escape", "cancel", "Cancel", "prompt", palette=False),
    KeySpec("dialog.close", "escape", "close", "Close", "error", palette=False),
    KeySpec("help.close", "escape,f1,q", "dismiss", "Close", "help", palette=False),
)

# Where each scope's keys work: the F1 headings, in the order F1 shows them.
SCOPE_TITLES = {
    "app": "Everywhere",
    "library": "Character library",
    "chat": "Chat",
    "transcript": "Message cursor (ctrl+up)",
    "edit": "Editing a turn",
    "chats": "A card's chats (Enter in the library)",
    "card_editor": "Card editor",
    "persona_editor": "Persona and scenario",
    "note": "Author's note",
    "inspector": "Prompt inspector",
    "settings": "Settings",
    "picker": "Models",
    "confirm": "Yes/no questions",
    "prompt": "Asking for a file or a line",
    "error": "Error messages",
    "help": "This help",
}

PRIORITY_SCOPES = ("library", "chat")
BY_ID = {spec.id: spec for spec in KEYS}


def bindings_for(scope: str) -> list[BindingType]:
    """Textual bindings (with ids, so `App.set_keymap` can remap them) for one scope."""
    return [
        # Library and chat keys must win over the focused filter box / text area, whose own
        # editing keys (ctrl+a, ctrl+d, ...) would otherwise swallow them.
        Binding(s.key, s.action, s.description, show=s.show, priority=s.priority or s.scope in PRIORITY_SCOPES,
                id=s.id)
        for s in KEYS
        if s.scope == scope
    ]


def check_keymap(keys: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """Split a config ``keys`` mapping into a usable keymap and problems (unknown ids, empty keys)."""
    keymap: dict[str, str] = {}
    problems: list[str] = []
    for binding_id, key in keys.items():
        if binding_id not in BY_ID:
            problems.append(f"unknown binding id {binding_id!r}")
        elif not isinstance(key, str) or not key.strip():
            problems.append(f"binding {binding_id!r} has no key")
        else:
            keymap[binding_id] = key.strip()
    return keymap, problems


def effective_key(spec: KeySpec, keymap: Mapping[str, str]) -> str:
    """The key(s) a binding answers to after the user's remapping."""
    return keymap.get(spec.id, spec.key)
